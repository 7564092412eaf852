-- list_copy.lua: copy entries of a list's live version into the version a resize builds,
-- in one slot group (gate/store/lists.py ``resize``), those still in the live version
-- only. The resize reads the live members, then copies them here: a member removed
-- meanwhile (list_delta.lua, which removes it from both versions) is not put back into
-- the new version, as this check and the copy are atomic with the removal.
--
-- KEYS[1 .. nl]          the group's buckets of the live version that the members below
--                        fall in (in bucket order)
-- KEYS[nl + 1 .. nl + nb]  the group's buckets of the new version (in bucket order)
-- ARGV[1]                nl, ARGV[2] nb
-- ARGV[3 ..]             nl counts, then nb counts: how many of the members below go to
--                        each bucket (KEYS in order)
-- ARGV[3 + nl + nb ..]   the members (signed 64-bit integers, decimal), ordered so that
--                        each live bucket's members, and each new bucket's, are one run
--
-- Returns the members added to the new version.

local nl, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local first = 3 + nl + nb

-- Which members are still live: SMISMEMBER over each live bucket's run, by at most 4000
-- (Lua's unpack has a stack limit of about 8000).
local live = {}
local at = first
for k = 1, nl do
  local left = tonumber(ARGV[2 + k])
  while left > 0 do
    local take = math.min(left, 4000)
    local found = redis.call("SMISMEMBER", KEYS[k], unpack(ARGV, at, at + take - 1))
    for i = 1, take do
      live[at + i - 1] = found[i] == 1
    end
    at, left = at + take, left - take
  end
end

local copied = 0
at = first
for k = 1, nb do
  local left = tonumber(ARGV[2 + nl + k])
  local batch = {}
  for i = at, at + left - 1 do
    if live[i] then
      batch[#batch + 1] = ARGV[i]
      if #batch == 4000 then
        copied = copied + redis.call("SADD", KEYS[nl + k], unpack(batch))
        batch = {}
      end
    end
  end
  if #batch > 0 then
    copied = copied + redis.call("SADD", KEYS[nl + k], unpack(batch))
  end
  at = at + left
end
return copied
