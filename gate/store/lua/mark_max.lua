-- mark_max.lua: record an event (refusal, abandoned call) in a cool-off marker, never moving
-- the marker's event time or its end earlier (decide.lua's R check reads it: the cool-off
-- runs from the latest event, so an older event reported late leaves a newer one's marker
-- in place, and a calendar-day end already stored is never shortened).
--
-- KEYS[1]   the marker: a STRING, "at_ms" (the latest event's time; the cool-off ends at
--           at_ms + period_ms) or "at_ms:end_ms" (it ends at end_ms, e.g. a rule counted
--           in calendar days: 00:00 local after its last day); times in ms since the epoch
-- ARGV[1]   at_ms      the event's time (ms since the Unix epoch)
-- ARGV[2]   end_ms     when this event's cool-off ends (ms since the Unix epoch)
-- ARGV[3]   period_ms  the rule's period: the end a plain "at_ms" marker stands for
-- ARGV[4]   now_ms     the caller's clock (ms since the Unix epoch); the marker lives
--                      until its end by that clock (at least 1 ms)
--
-- Sets the marker to the later event time and the later end of the one held and the one
-- given, written "at_ms" when that end is at_ms + period_ms, else "at_ms:end_ms"; replies
-- 1 when set, 0 when the key already held an event as late with an end as late (then its
-- value and TTL are left as they are).

local key = KEYS[1]
local at, finish = tonumber(ARGV[1]), tonumber(ARGV[2])
local period, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local old = redis.call("GET", key)
if old then
  local colon = string.find(old, ":", 1, true)
  local old_at = tonumber(colon and string.sub(old, 1, colon - 1) or old)
  local old_end = colon and tonumber(string.sub(old, colon + 1)) or old_at + period
  if old_at >= at and old_end >= finish then
    return 0
  end
  at, finish = math.max(at, old_at), math.max(finish, old_end)
end
local value = string.format("%.0f", at)
if finish ~= at + period then
  value = value .. ":" .. string.format("%.0f", finish)
end
redis.call("SET", key, value, "PX", string.format("%.0f", math.max(finish - now, 1)))
return 1
