-- release.lua: give back a reservation in an attempt log (cluster mode: a trunk's CPS log
-- reserved by its own call for a decision that then did not let the call go).
--
-- KEYS[1]   the attempt log: a STRING of packed big-endian doubles (times, ms), in order
-- ARGV[1]   now_ms, the time the reservation was made with
--
-- Removes one entry equal to now_ms, keeping the log's expiry, even over maxmemory. Returns 1 if one was
-- removed, 0 if none was there (the log expired meanwhile). A log callgate did not write
-- (a STRING whose length is not a multiple of 8, a key of another type) is left as it
-- is: 0 (decide.lua reserves nothing in such a log).

local raw = redis.pcall("GET", KEYS[1])
if type(raw) ~= "string" or #raw % 8 ~= 0 then
  return 0
end
local now = tonumber(ARGV[1])
for j = #raw / 8, 1, -1 do
  local t = struct.unpack(">d", raw, j * 8 - 7)
  if t == now then
    local rest = string.sub(raw, 1, (j - 1) * 8) .. string.sub(raw, j * 8 + 1)
    -- Shrunk in place, keeping the log's expiry: DEL, then SET with what was left of it.
    -- Not SET KEEPTTL alone: over maxmemory (noeviction) Redis refuses a script's first
    -- write if it may grow memory (SET: OOM), not once the script has written (DEL never
    -- is refused), and giving a reservation back must go through then: it frees memory.
    local ttl = redis.call("PTTL", KEYS[1])
    redis.call("DEL", KEYS[1])
    if rest ~= "" then
      if ttl >= 0 then
        redis.call("SET", KEYS[1], rest, "PX", math.max(ttl, 1))
      else
        redis.call("SET", KEYS[1], rest)
      end
    end
    return 1
  end
  if t < now then
    return 0
  end
end
return 0
