-- mark_max.lua: set a cool-off marker to an event's time unless it already holds a later
-- one (decide.lua's R check reads it: the cool-off runs from the latest refusal or
-- abandoned call, so an older event reported late leaves a newer one's marker in place).
--
-- KEYS[1]   the marker: a STRING, the time (ms since the Unix epoch) of the latest event
-- ARGV[1]   at_ms   the event's time (ms since the Unix epoch)
-- ARGV[2]   ttl_ms  how long the marker lives when set (ms; the cool-off's end by the
--                   caller's clock), at least 1
--
-- Sets the value and its TTL together only when the key is absent, holds an earlier time, or
-- holds no time as callgate writes it (up to 13 decimal digits, as decide.lua reads it: a
-- value written by hand or by another tool); else leaves both. Replies 1 when set, 0 when
-- the key already held a time as late.

local key = KEYS[1]
local at = tonumber(ARGV[1])
local old = redis.call("GET", key)
if old and #old <= 13 and string.find(old, "^%d+$") and tonumber(old) >= at then
  return 0
end
redis.call("SET", key, ARGV[1], "PX", ARGV[2])
return 1
