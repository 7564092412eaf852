-- list_delta.lua: add or remove entries of a list in one slot group, atomically.
--
-- KEYS[1]      the group's meta HASH (gate/core/keys.py): field L = the live version
--              "version/bits", L:b = the version being built (a --replace import),
--              L:n = the live version's entries in this group
-- KEYS[2 ..]   the group's bucket SETs of the live version (nl of them, in bucket order),
--              then those of the version being built (nb of them; none if no build)
-- ARGV[1]      "add" or "remove"
-- ARGV[2]      L, the list instance
-- ARGV[3]      the live version the caller read ("version/bits"; "" for none)
-- ARGV[4]      the version being built the caller read ("" for none)
-- ARGV[5]      nl, ARGV[6] nb
-- ARGV[7 ..]   nl counts, then nb counts: how many of the members below go to each
--              bucket (KEYS[2 ..] in order)
-- ARGV[7 + nl + nb ..]  the members (signed 64-bit integers, decimal), ordered so that
--              each live bucket's members, and each building bucket's, are one run
--
-- When the meta holds other versions than the caller read (a replacement started or
-- switched meanwhile), nothing is written and the reply is {-1, live, building} as the
-- meta holds them: the caller sends the entries again to those buckets. Otherwise every
-- entry is applied to the live version and, while a replacement is being built, to that
-- version too, so an opt-out recorded during a --replace import survives the switch.
-- Returns {changed, entries}: entries added/removed in the live version and the entries it
-- holds in this group afterwards (L:n follows it). An L:n that is not a whole number
-- (callgate did not write it: by hand, a bad migration) writes nothing and replies
-- {-2, L:n}: HINCRBY refused it only after the buckets had changed, an error saying
-- neither the key nor the field.

local meta, list = KEYS[1], ARGV[2]
local held = redis.call("HMGET", meta, list, list .. ":b", list .. ":n")
local live, building = held[1] or "", held[2] or ""
if live ~= ARGV[3] or building ~= ARGV[4] then
  return {-1, live, building}
end
if held[3] and not string.match(held[3], "^%d+$") then
  return {-2, held[3]}
end
if live == "" then
  return {0, 0}
end
local command = ARGV[1] == "add" and "SADD" or "SREM"
local nl, nb = tonumber(ARGV[5]), tonumber(ARGV[6])
local first = 7 + nl + nb

-- Applies the command to buckets KEYS[key0 + 1 .. key0 + n], whose counts are
-- ARGV[count0 + 1 .. count0 + n]; returns the sum of the replies. Members go by at most
-- 4000 per call (Lua's unpack has a stack limit of about 8000).
local function apply(key0, count0, n)
  local at, total = first, 0
  for k = 1, n do
    local left = tonumber(ARGV[count0 + k])
    while left > 0 do
      local take = math.min(left, 4000)
      total = total + redis.call(command, KEYS[key0 + k], unpack(ARGV, at, at + take - 1))
      at, left = at + take, left - take
    end
  end
  return total
end

local changed = apply(1, 6, nl)
if nb > 0 then
  apply(1 + nl, 6 + nl, nb)
end
-- (0 - changed, not -changed: Lua's -0 is "-0", which HINCRBY refuses.)
local entries = redis.call("HINCRBY", meta, list .. ":n", ARGV[1] == "add" and changed or 0 - changed)
return {changed, entries}
