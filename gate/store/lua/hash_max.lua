-- hash_max.lua: raise HASH fields to the given values, never lower them (a reassigned
-- list's void_before_ms: the last disconnection of a number is the one that counts, so
-- an older date imported later leaves a newer one in place).
--
-- KEYS[1]       the HASH
-- ARGV[2i-1]    a field (a number's token)
-- ARGV[2i]      its value (an integer, e.g. ms since the Unix epoch)
--
-- A value that is not a time as callgate writes it (up to 13 decimal digits, as decide.lua
-- reads it: a value written by hand or by another tool) is replaced, as a lower one.
-- Replies {new, raised}: the fields that were absent, the fields whose value was raised.

local key = KEYS[1]
local new, raised = 0, 0
for i = 1, #ARGV, 2 do
  local old = redis.call("HGET", key, ARGV[i])
  if not old then
    redis.call("HSET", key, ARGV[i], ARGV[i + 1])
    new = new + 1
  elseif #old > 13 or not string.find(old, "^%d+$") or tonumber(old) < tonumber(ARGV[i + 1]) then
    redis.call("HSET", key, ARGV[i], ARGV[i + 1])
    raised = raised + 1
  end
end
return {new, raised}
