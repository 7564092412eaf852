-- decide.lua: all the Redis work of one call decision, atomically (one EVALSHA).
--
-- KEYS[1 .. L]          list SETs, one per list rule in force (members are number tokens)
-- KEYS[L+1 .. L+C]      attempt logs of the frequency caps in force, one per cap: a STRING of
--                       packed big-endian doubles, each an allowed attempt's time in ms
-- KEYS[L+C+1]           the trunk's attempt log (same encoding), only when ARGV[6] > 0
--
-- ARGV[1]  now_ms       the attempt's time, integer milliseconds since the Unix epoch
-- ARGV[2]  record       "1": count the attempt if allowed; "0": evaluate only
-- ARGV[3]  token        the number's token, as stored in the lists
-- ARGV[4]  L            number of list keys
-- ARGV[5]  C            number of cap keys
-- ARGV[6]  cps_limit    trunk calls per second (0: no trunk cap, no trunk key)
-- ARGV[7]  cps_window   trunk window in ms (1000)
-- ARGV[8 .. 7+L]        per list: "a" (allow list) or "b" followed by the comma-separated
--                       1-based indexes of the allow lists that exempt it ("b", "b2,3")
-- ARGV[8+L .. ]         per cap: limit (attempts), window (ms); 2*C values
--
-- Returns {outcome, index, retry_after_ms, memberships, counts, cps_count}
--   outcome          0 pass, 1 listed (BLOCK), 2 cap reached (DEFER), 3 trunk CPS (DEFER)
--   index            1-based index of the deciding list or cap (0 otherwise)
--   retry_after_ms   for 2 and 3: ms until the oldest counted attempt leaves its window
--   memberships      L integers, 1 where the token is in that list
--   counts           C integers, attempts already inside each cap's window
--   cps_count        attempts on the trunk inside the last window
-- Writes only when outcome is 0 and record is "1": appends now_ms to every log, prunes
-- entries that left their window, and sets each log to expire when its window does. A log
-- is only appended to while it holds fewer than `limit` live entries, so it never holds
-- more than `limit` (32 bytes for a cap of 4).

local now = tonumber(ARGV[1])
local record = ARGV[2] == "1"
local token = ARGV[3]
local n_lists = tonumber(ARGV[4])
local n_caps = tonumber(ARGV[5])
local cps_limit = tonumber(ARGV[6])
local cps_window = tonumber(ARGV[7])

-- Entries of a packed log still inside (now - window, now], oldest first.
local function live_entries(key, window)
  local raw = redis.call("GET", key)
  local kept = {}
  if not raw then
    return kept
  end
  for offset = 1, #raw - 7, 8 do
    local t = struct.unpack(">d", raw, offset)
    if t > now - window then
      kept[#kept + 1] = t
    end
  end
  return kept
end

local function append_and_store(key, entries, window)
  local parts = {}
  for i = 1, #entries do
    parts[i] = struct.pack(">d", entries[i])
  end
  parts[#parts + 1] = struct.pack(">d", now)
  redis.call("SET", key, table.concat(parts), "PX", window)
end

-- Lists: a block list decides unless one of its exempting allow lists holds the token.
local members = {}
for i = 1, n_lists do
  members[i] = redis.call("SISMEMBER", KEYS[i], token)
end
local memberships = members
for i = 1, n_lists do
  local spec = ARGV[7 + i]
  if members[i] == 1 and string.sub(spec, 1, 1) == "b" then
    local exempted = false
    for allow in string.gmatch(string.sub(spec, 2), "%d+") do
      if members[tonumber(allow)] == 1 then
        exempted = true
      end
    end
    if not exempted then
      return {1, i, 0, memberships, {}, 0}
    end
  end
end

-- Frequency caps: exact rolling windows. When several are reached, the longest wait wins.
local logs = {}
local counts = {}
local deciding, retry = 0, 0
for c = 1, n_caps do
  local limit = tonumber(ARGV[7 + n_lists + 2 * c - 1])
  local window = tonumber(ARGV[7 + n_lists + 2 * c])
  local entries = live_entries(KEYS[n_lists + c], window)
  logs[c] = entries
  counts[c] = #entries
  if #entries >= limit then
    local wait = entries[#entries - limit + 1] + window - now
    if wait > retry or deciding == 0 then
      deciding, retry = c, wait
    end
  end
end
if deciding > 0 then
  return {2, deciding, retry, memberships, counts, 0}
end

-- Trunk calls per second: the same exact log over a one-second window.
local cps_entries = {}
if cps_limit > 0 then
  cps_entries = live_entries(KEYS[n_lists + n_caps + 1], cps_window)
  if #cps_entries >= cps_limit then
    local wait = cps_entries[#cps_entries - cps_limit + 1] + cps_window - now
    return {3, 0, wait, memberships, counts, #cps_entries}
  end
end

if record then
  for c = 1, n_caps do
    append_and_store(KEYS[n_lists + c], logs[c], tonumber(ARGV[7 + n_lists + 2 * c]))
  end
  if cps_limit > 0 then
    append_and_store(KEYS[n_lists + n_caps + 1], cps_entries, cps_window)
  end
end
return {0, 0, 0, memberships, counts, #cps_entries}
