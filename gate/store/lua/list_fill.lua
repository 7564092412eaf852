-- list_fill.lua: add entries to the buckets of one slot group of a list version that is
-- being built (a --replace import; gate/store/lists.py; a resize copies with
-- list_copy.lua), one call per group and batch of entries instead of one command per
-- bucket; or count them.
--
-- KEYS[1 .. n]      buckets (SETs) of one slot group of that version
-- ARGV[1 .. n]      how many of the members below go to each bucket (KEYS in order;
--                   all 0: only count)
-- ARGV[n + 1 ..]    the members (signed 64-bit integers, decimal), bucket after bucket
--
-- Returns {added, held}: the members added (members already there are not counted) and
-- the entries the n buckets hold afterwards.

local n = #KEYS
local at, added, held = n + 1, 0, 0
for k = 1, n do
  local left = tonumber(ARGV[k])
  -- At most 4000 members per SADD: Lua's unpack has a stack limit of about 8000.
  while left > 0 do
    local take = math.min(left, 4000)
    added = added + redis.call("SADD", KEYS[k], unpack(ARGV, at, at + take - 1))
    at, left = at + take, left - take
  end
  held = held + redis.call("SCARD", KEYS[k])
end
return {added, held}
