-- list_delta.lua: add or remove entries of a list, atomically (one call per batch).
--
-- KEYS[1]      the list head (a HASH: version, bits, count, building, building_bits,
--              next_version; see gate/keys.py). Bucket SETs are derived from it:
--              <head>:v<version>:<bucket>, same hash tag, same Redis Cluster slot.
-- ARGV[1]      "add" or "remove"
-- ARGV[2 ..]   pairs: member (signed 64-bit integer, decimal), bucket32 (decimal)
--
-- Applies every pair to the live version (creating version 1 with one bucket when the list
-- has none) and, while a replacement is being built (`building`), to that version too, so
-- an opt-out recorded during a --replace import survives the switch.
-- Returns {changed, bits, count}: entries added/removed in the live version, its bucket
-- bits and its entry count afterwards (the caller resizes an overfull list).

local head, op = KEYS[1], ARGV[1]
local layout = redis.call("HMGET", head, "version", "bits", "building", "building_bits")
local version, bits = layout[1], tonumber(layout[2] or "0")
if not version then
  if op ~= "add" then
    return {0, 0, 0}
  end
  version = tostring(redis.call("HINCRBY", head, "next_version", 1))
  bits = 0
  redis.call("HSET", head, "version", version, "bits", 0, "count", 0)
end

local function bucket_of(b, value)
  if b == 0 then
    return 0
  end
  return math.floor(value / 2 ^ (32 - b))
end

local command = op == "add" and "SADD" or "SREM"
local changed = 0
for i = 2, #ARGV - 1, 2 do
  local member, value = ARGV[i], tonumber(ARGV[i + 1])
  changed = changed + redis.call(command, head .. ":v" .. version .. ":" .. bucket_of(bits, value), member)
  if layout[3] then
    local building = head .. ":v" .. layout[3] .. ":" .. bucket_of(tonumber(layout[4]), value)
    redis.call(command, building, member)
  end
end
local count = redis.call("HINCRBY", head, "count", op == "add" and changed or -changed)
return {changed, bits, count}
