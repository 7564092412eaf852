-- list_delta.lua: add or remove entries of a list in one slot group, atomically.
--
-- KEYS[1]      the group's meta HASH (gate/core/keys.py): field L = the live version
--              "version/bits", L:b = the version being built (a --replace import),
--              L:n = the live version's entries in this group
-- KEYS[2 ..]   the bucket SETs the entries go to (live and building versions)
-- ARGV[1]      "add" or "remove"
-- ARGV[2]      L, the list instance
-- ARGV[3]      the live version the caller read ("version/bits"; "" for none)
-- ARGV[4]      the version being built the caller read ("" for none)
-- ARGV[5 ..]   triples: member (signed 64-bit integer, decimal), index in KEYS of its
--              live bucket, index in KEYS of its building bucket (0: none)
--
-- When the meta holds other versions than the caller read (a replacement started or
-- switched meanwhile), nothing is written and the reply is {-1, live, building} as the
-- meta holds them: the caller sends the entries again to those buckets. Otherwise every
-- entry is applied to the live version and, while a replacement is being built, to that
-- version too, so an opt-out recorded during a --replace import survives the switch.
-- Returns {changed, entries}: entries added/removed in the live version and the entries it
-- holds in this group afterwards (L:n follows it).

local meta, list = KEYS[1], ARGV[2]
local held = redis.call("HMGET", meta, list, list .. ":b")
local live, building = held[1] or "", held[2] or ""
if live ~= ARGV[3] or building ~= ARGV[4] then
  return {-1, live, building}
end
if live == "" then
  return {0, 0}
end
local command = ARGV[1] == "add" and "SADD" or "SREM"
local changed = 0
for i = 5, #ARGV - 2, 3 do
  local member = ARGV[i]
  changed = changed + redis.call(command, KEYS[tonumber(ARGV[i + 1])], member)
  local other = tonumber(ARGV[i + 2])
  if other > 0 then
    redis.call(command, KEYS[other], member)
  end
end
-- (0 - changed, not -changed: Lua's -0 is "-0", which HINCRBY refuses.)
local entries = redis.call("HINCRBY", meta, list .. ":n", ARGV[1] == "add" and changed or 0 - changed)
return {changed, entries}
