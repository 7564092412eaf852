-- call_counts.lua: count one answered or abandoned call of a campaign, for its
-- abandoned-call ceiling (decide.lua's Q check reads what this writes; no decision writes).
--
-- KEYS[1]   the rule's counts for a campaign (or a tenant): a STRING of packed big-endian
--           doubles, the totals (live, abandoned) then one (minute_ms, live, abandoned) per
--           minute with calls, in time order (gate/core/keys.py ``ceiling_key``)
-- ARGV[1]   at_ms      when the call was answered (ms since the Unix epoch)
-- ARGV[2]   now_ms     the caller's clock (ms): minutes that have wholly left the window by
--                      it are dropped, and the key expires when its newest minute has
-- ARGV[3]   window_ms  the rule's window
-- ARGV[4]   live       live calls to add (an answered call that reached an agent: 1; an
--                      abandoned call: 1, it was answered by a live person too)
-- ARGV[5]   abandoned  abandoned calls to add (1 for an abandoned call, else 0)
--
-- A minute counts while any of it is inside the window (minute_ms + 60000 + window >
-- now), as decide.lua reads it. A call whose minute has already left the window is not
-- counted. Replies {live, abandoned}: the totals now in the window; or nil, nothing
-- written, when KEYS[1] holds a value callgate did not write (a key of another type, a
-- STRING whose length is not 16 + 24k, or one whose doubles are no counts callgate
-- writes: a count not in [0, 1e13), a minute not a whole minute in it, NaN; decide.lua
-- counts it as over the ceiling): the caller says so (gate/lists/admin.py). An empty
-- STRING holds no counts: replaced.

local MINUTE_MS = 60000
local unpack_struct, pack = struct.unpack, struct.pack
local key = KEYS[1]
local at, now, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local add_live, add_abandoned = tonumber(ARGV[4]), tonumber(ARGV[5])

-- An error reply (a key of another type: WRONGTYPE) is a table: unreadable.
local raw = redis.pcall("GET", key)
-- (Lua's % is never negative: a length under 16 but 0 is not 16 + 24k either.)
if raw and (type(raw) ~= "string" or (#raw > 0 and (#raw - 16) % 24 ~= 0)) then
  return false
end
local live, abandoned, body = 0, 0, ""
if raw and #raw > 0 then
  live, abandoned = unpack_struct(">dd", raw)
  body = string.sub(raw, 17)
  -- Each double as callgate writes them (a comparison with NaN is false). Read whole:
  -- counting a call is rare, and a day of minutes is some 1 440 entries.
  local LIMIT = 1e13
  local function count(x)
    return x >= 0 and x < LIMIT
  end
  if not (count(live) and count(abandoned)) then
    return false
  end
  for at_entry = 1, #body, 24 do
    local minute, l, a = unpack_struct(">ddd", body, at_entry)
    if not (count(minute) and minute % MINUTE_MS == 0 and count(l) and count(a)) then
      return false
    end
  end
end

-- Drop the minutes that have wholly left the window.
local n, first = #body / 24, 1
while first <= n do
  local minute, l, a = unpack_struct(">ddd", body, first * 24 - 23)
  if minute + MINUTE_MS + window > now then
    break
  end
  live, abandoned, first = live - l, abandoned - a, first + 1
end
body = string.sub(body, first * 24 - 23)
n = n - first + 1

local minute = at - at % MINUTE_MS
if minute + MINUTE_MS + window > now then
  -- The first entry not earlier than this minute (calls arrive in time order, so almost
  -- always the last one or none).
  local lo, hi = 1, n + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if unpack_struct(">d", body, mid * 24 - 23) < minute then
      lo = mid + 1
    else
      hi = mid
    end
  end
  local at_entry = lo * 24 - 23
  local entry
  if lo <= n and unpack_struct(">d", body, at_entry) == minute then
    local _, l, a = unpack_struct(">ddd", body, at_entry)
    entry, lo = pack(">ddd", minute, l + add_live, a + add_abandoned), lo + 1
  else
    entry = pack(">ddd", minute, add_live, add_abandoned)
  end
  body = string.sub(body, 1, at_entry - 1) .. entry .. string.sub(body, lo * 24 - 23)
  n = #body / 24
  live, abandoned = live + add_live, abandoned + add_abandoned
end

if n == 0 then
  redis.call("DEL", key)
  return {0, 0}
end
local newest = unpack_struct(">d", body, n * 24 - 23)
redis.call("SET", key, pack(">dd", live, abandoned) .. body, "PX", math.ceil(newest + MINUTE_MS + window - now))
return {live, abandoned}
