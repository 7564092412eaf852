-- decide.lua: all the Redis work of a call decision, atomically (one EVALSHA).
--
-- The engine (gate/engine.py) sends an ordered list of checks; this script runs them
-- against the keys and returns what each saw and which one decided. The gate sends one
-- decision per call; a scrub sends a batch of independent decisions (same logic, one call).
--
-- KEYS[1 .. #KEYS]   the keys the checks name by index (list heads, consent hashes,
--                    cool-off markers, attempt logs), shared by the batch
-- ARGV[1]            n, the number of decisions; then, for each decision:
--   now_ms           the attempt's time, integer milliseconds since the Unix epoch
--   record           "1": count the attempt in every attempt log if allowed; "0": evaluate only
--   token            the number's token (consent hashes)
--   member           the number as a list member (signed 64-bit integer, decimal)
--   bucket32         the number's 32-bit bucket value (decimal)
--   c                the number of checks, followed by c checks, fields separated by "|":
--   A|s|k              allow list: is the member in list head KEYS[k]? Never decides.
--                      (A list head is a HASH with `version` and `bits`; the member is in
--                      SET <head>:v<version>:<top `bits` bits of bucket32>. Those bucket
--                      keys are derived here and share the head's hash tag, so the same
--                      Redis Cluster slot; gate/keys.py.)
--   H|s|k              consent hash: HGET KEYS[k] token = "granted_ms:expiry_ms" (expiry 0:
--                      none); hit if present and unexpired. Never decides.
--   B|s|k|e1,e2        block list: BLOCK if the member is in list head KEYS[k], unless
--                      check e1, e2… (A/H) hit.
--   C|s|k|e1,e2        consent required: BLOCK unless this consent hash holds an unexpired
--                      entry or check e1, e2… hit.
--   M|s|k|e1,e2        presence required (an allow list, e.g. a scrubbed file): BLOCK unless
--                      the member is in list head KEYS[k] or check e1, e2… hit.
--   R|s|k|period_ms    cool-off: KEYS[k] holds the time (ms) of the last event (refusal,
--                      abandoned call); DEFER until that time + period_ms.
--   F|s|k|max_age_ms|retry_ms|e1,e2
--                      freshness: DEFER (retry_ms) unless HGET KEYS[k] "refreshed_at" is
--                      within max_age_ms of now, or check e1, e2… hit.
--   W|s|retry_ms|e1    calling window: the engine computed retry_ms (> 0: outside the
--                      window now); DEFER unless check e1 (outside-hours consent) hit.
--   L|s|k|limit|window_ms
--                      attempt log (frequency cap, trunk CPS): KEYS[k] is a STRING of packed
--                      big-endian doubles (attempt times, ms); DEFER when `limit` attempts
--                      are inside the window, retry = until the oldest of them leaves it.
--   s is "1" for a shadow check: evaluated and reported, never deciding.
--   evidence         "" (nothing to write), or the head of the audit entry: a JSON object's
--                    text without its closing "}" (the fields known in-process), followed
--                    by three more arguments:
--     labels         the static rules' shadow reasons ("a,b"), "\n", then per check
--                    "rule\treason\tlist\n" (its rule id, reason code, list name or "")
--     stream         index in KEYS of the audit stream
--     min_id_ms      entries of the stream older than this are trimmed (MINID ~)
--
-- BLOCK checks decide in order (the first wins). Among DEFER checks the longest wait wins.
-- Returns one {decided, retry_ms, results, versions} per decision (versions[i]: the list
-- version check i consulted, "" for other checks): decided = 1-based index of the
-- deciding check (0:
-- allowed); results[i] = what check i saw: 0/1 for A H B C M (1 = member / valid consent),
-- ms left or 0 for R, age ms or -1 (never refreshed) for F, retry_ms for W, entries inside
-- the window for L.
-- When record is "1" and evidence is given, the decision's audit entry (gate/core/evidence.py
-- FIELDS: the head completed with verdict, reason, rule, lists, counters, shadow and
-- retry_after_s) is appended to the stream as one field "e" (JSON), whatever the verdict:
-- the evidence and the counters are one atomic fact.
-- Writes only when nothing decided and record is "1": inserts now_ms, in time order, into
-- every attempt log that holds fewer than `limit` live entries (a shadow cap at its limit
-- stops growing), and sets each log to expire when its newest entry leaves the window.
-- A real attempt is never dropped whatever now_ms is sent: entries are removed only once
-- they left the window by the clock of the attempt AND by Redis's own clock (TIME), so an
-- attempt dated in the future erases nothing; entries "from the future" (a gate whose
-- clock runs ahead, within the callers' documented skew) are kept and counted.

local now, record, token, member, bucket32

-- Is the member on the list whose head is `head`? Also returns the version consulted.
local function list_member(head)
  local layout = redis.call("HMGET", head, "version", "bits")
  if not layout[1] then
    return 0, ""
  end
  local bits = tonumber(layout[2])
  local bucket = bits > 0 and math.floor(bucket32 / 2 ^ (32 - bits)) or 0
  return redis.call("SISMEMBER", head .. ":v" .. layout[1] .. ":" .. bucket, member), layout[1]
end

local function split(text)
  local fields = {}
  for field in string.gmatch(text .. "|", "([^|]*)|") do
    fields[#fields + 1] = field
  end
  return fields
end

local function consent_valid(key)
  local value = redis.call("HGET", key, token)
  if not value then
    return 0
  end
  local expiry = tonumber(string.match(value, ":(%d+)$") or "0")
  if expiry == 0 or expiry > now then
    return 1
  end
  return 0
end

-- A packed attempt log: every entry (oldest first) and how many are live, i.e. after
-- now - window (entries later than now included: they are real attempts too).
local function read_log(key, window)
  local raw = redis.call("GET", key)
  local entries, live = {}, 0
  if not raw then
    return entries, live
  end
  for offset = 1, #raw - 7, 8 do
    local t = struct.unpack(">d", raw, offset)
    entries[#entries + 1] = t
    if t > now - window then
      live = live + 1
    end
  end
  return entries, live
end

-- The live entries of a log, oldest first (entries are kept in time order).
local function live_tail(entries, window)
  local kept = {}
  for j = 1, #entries do
    if entries[j] > now - window then
      kept[#kept + 1] = entries[j]
    end
  end
  return kept
end

-- Writes the log back with now inserted in time order. Entries are dropped only when
-- they left the window by both clocks (the attempt's and Redis's), so a wrong now_ms
-- never erases a real attempt; the log expires when its newest entry leaves the window.
local function append_log(key, entries, window)
  local clock = redis.call("TIME")
  local server_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  local horizon = math.min(now, server_ms) - window
  local parts, newest, placed = {}, now, false
  for j = 1, #entries do
    local t = entries[j]
    if not placed and t > now then
      parts[#parts + 1] = struct.pack(">d", now)
      placed = true
    end
    if t > horizon then
      parts[#parts + 1] = struct.pack(">d", t)
      if t > newest then
        newest = t
      end
    end
  end
  if not placed then
    parts[#parts + 1] = struct.pack(">d", now)
  end
  local ttl = math.max(window, newest + window - server_ms)
  redis.call("SET", key, table.concat(parts), "PX", math.ceil(ttl))
end

-- "1800", "0.5": milliseconds as seconds, as gate/core/evidence.py writes retry_after_s.
local function seconds_text(ms)
  ms = math.max(math.floor(ms), 1)
  local text = string.format("%d.%03d", math.floor(ms / 1000), ms % 1000)
  return (string.gsub(string.gsub(text, "0+$", ""), "%.$", ""))
end

-- Completes the audit entry's head with what the decision saw and appends it.
local function write_evidence(head, labels, stream, min_id, checks, outcome)
  local static, rest = string.match(labels, "^([^\n]*)\n(.*)$")
  local rules, reasons, names = {}, {}, {}
  for rule, reason, name in string.gmatch(rest, "([^\t]*)\t([^\t]*)\t([^\n]*)\n") do
    rules[#rules + 1], reasons[#reasons + 1], names[#names + 1] = rule, reason, name
  end
  local lists, at, counters, shadow = {}, {}, {}, {}
  if static ~= "" then
    shadow[1] = static
  end
  for i, c in ipairs(checks) do
    local name = names[i]
    if outcome.versions[i] ~= "" and name ~= "" then
      if not at[name] then
        lists[#lists + 1] = name
      end
      at[name] = outcome.versions[i]
    end
    if c[1] == "L" then
      counters[#counters + 1] = rules[i] .. "=" .. outcome.results[i]
    end
    if outcome.shadowed[i] then
      shadow[#shadow + 1] = reasons[i]
    end
  end
  for j, name in ipairs(lists) do
    lists[j] = name .. "@" .. at[name]
  end
  local verdict, reason, rule, retry = "ALLOW", "allowed", "", ""
  if outcome.decided > 0 then
    reason, rule = reasons[outcome.decided], rules[outcome.decided]
    if outcome.block then
      verdict = "BLOCK"
    else
      verdict, retry = "DEFER", seconds_text(outcome.retry)
    end
  end
  local entry = table.concat({
    head, ',"verdict":"', verdict, '","reason":"', reason, '","rule":"', rule,
    '","lists":"', table.concat(lists, ","), '","counters":"', table.concat(counters, ","),
    '","shadow":"', table.concat(shadow, ","), '","retry_after_s":"', retry, '"}',
  })
  redis.call("XADD", stream, "MINID", "~", min_id, "*", "e", entry)
end

local function decide(base)
  now = tonumber(ARGV[base])
  record = ARGV[base + 1] == "1"
  token = ARGV[base + 2]
  member = ARGV[base + 3]
  bucket32 = tonumber(ARGV[base + 4])
  local checks, results, logs, versions, shadowed = {}, {}, {}, {}, {}
  local after = base + 6 + tonumber(ARGV[base + 5])
  for i = base + 6, after - 1 do
    checks[#checks + 1] = split(ARGV[i])
  end
  local evidence = ARGV[after]

  local function exempted(list)
    for index in string.gmatch(list or "", "%d+") do
      if results[tonumber(index)] == 1 then
        return true
      end
    end
    return false
  end

  local block, defer, retry = 0, 0, 0
  for i, c in ipairs(checks) do
    local kind, shadow = c[1], c[2] == "1"
    versions[i] = ""
    local decides, wait = false, 0
    if kind == "A" then
      results[i], versions[i] = list_member(KEYS[tonumber(c[3])])
    elseif kind == "H" then
      results[i] = consent_valid(KEYS[tonumber(c[3])])
    elseif kind == "B" then
      results[i], versions[i] = list_member(KEYS[tonumber(c[3])])
      decides = results[i] == 1 and not exempted(c[4])
    elseif kind == "C" then
      results[i] = consent_valid(KEYS[tonumber(c[3])])
      decides = results[i] == 0 and not exempted(c[4])
    elseif kind == "M" then
      results[i], versions[i] = list_member(KEYS[tonumber(c[3])])
      decides = results[i] == 0 and not exempted(c[4])
    elseif kind == "R" then
      local event = tonumber(redis.call("GET", KEYS[tonumber(c[3])]) or "0")
      local left = event > 0 and event + tonumber(c[4]) - now or 0
      results[i] = left > 0 and left or 0
      decides, wait = left > 0, left
    elseif kind == "F" then
      local refreshed = tonumber(redis.call("HGET", KEYS[tonumber(c[3])], "refreshed_at") or "-1")
      results[i] = refreshed < 0 and -1 or now - refreshed
      decides = (refreshed < 0 or now - refreshed > tonumber(c[4])) and not exempted(c[6])
      wait = tonumber(c[5])
    elseif kind == "W" then
      results[i] = tonumber(c[3])
      decides = results[i] > 0 and not exempted(c[4])
      wait = results[i]
    elseif kind == "L" then
      local limit, window = tonumber(c[4]), tonumber(c[5])
      local entries, live = read_log(KEYS[tonumber(c[3])], window)
      logs[i] = entries
      results[i] = live
      if live >= limit then
        local kept = live_tail(entries, window)
        decides, wait = true, kept[live - limit + 1] + window - now
      end
    else
      error("decide.lua: unknown check kind " .. tostring(kind))
    end
    shadowed[i] = decides and shadow
    if decides and not shadow then
      if kind == "B" or kind == "C" or kind == "M" then
        if block == 0 then
          block = i
        end
      elseif defer == 0 or wait > retry then
        defer, retry = i, wait
      end
    end
  end

  local next_base = evidence == "" and after + 1 or after + 4
  if record and evidence ~= "" then
    local decided = block > 0 and block or defer
    write_evidence(evidence, ARGV[after + 1], KEYS[tonumber(ARGV[after + 2])], ARGV[after + 3],
      checks, {decided = decided, block = block > 0, retry = retry, results = results,
      versions = versions, shadowed = shadowed})
  end
  if block > 0 then
    return {block, 0, results, versions}, next_base
  end
  if defer > 0 then
    return {defer, retry, results, versions}, next_base
  end
  if record then
    for i, c in ipairs(checks) do
      if c[1] == "L" and results[i] < tonumber(c[4]) then
        append_log(KEYS[tonumber(c[3])], logs[i], tonumber(c[5]))
      end
    end
  end
  return {0, 0, results, versions}, next_base
end

local replies, base = {}, 2
for _ = 1, tonumber(ARGV[1]) do
  replies[#replies + 1], base = decide(base)
end
return replies
