-- decide.lua: all the Redis work of a call decision, atomically (one EVALSHA).
--
-- The engine (gate/core/engine.py) plans an ordered list of checks; the store
-- (gate/store/client.py) names their keys in the number's slot group (gate/core/keys.py)
-- and sends them here; this script runs them and returns what each saw and which one
-- decided. The gate sends one decision per call; a scrub sends a batch of independent
-- decisions (same logic, one call). Every key is declared in KEYS: on Redis Cluster the
-- keys of one call share one slot (a shared attempt log, e.g. a trunk's CPS, is then
-- reserved by a call of its own and given here as an X check).
--
-- KEYS[1 .. #KEYS]   the keys the decisions name by index
-- ARGV[1]            n, the number of decisions; then, for each decision:
--   now_ms           the attempt's time, integer milliseconds since the Unix epoch
--   record           "1": count the attempt in every attempt log if allowed; "0": evaluate only
--   member           the number as a list member (signed 64-bit integer, decimal)
--   token            the number's token (consent hashes)
--   meta             index in KEYS of the slot group's meta HASH (0 when nf is 0)
--   nf, then nf field names, then nf expected values: HMGET meta fields. An expected value
--                    "*" accepts anything (e.g. a list's "L:r" refreshed_at); any other
--                    (a list version "version/bits", or "" for no list) must equal what
--                    the meta holds, else the decision is STALE: nothing is evaluated or
--                    written, and the reply carries what the meta holds (the caller's view
--                    of the lists is out of date: it retries with it).
--   nc, then nc checks, each a kind letter (lowercase: a shadow check, evaluated and
--   reported, never deciding) followed by its own fields:
--     A k            allow list: is the member in SET KEYS[k] (its bucket of the live
--                    version; k = 0: no such list)? Never decides.
--     H k            consent held: HGET KEYS[k] token = "granted_ms:expiry_ms" (expiry 0:
--                    none); 1 if present and unexpired. Never decides.
--     B k x          block list: BLOCK if the member is in SET KEYS[k], unless exempted.
--     C k x          consent required: BLOCK unless HASH KEYS[k] holds an unexpired
--                    consent, or exempted.
--     M k x          presence required (an allow list, e.g. a scrubbed file): BLOCK unless
--                    the member is in SET KEYS[k], or exempted.
--     R k period_ms  cool-off: KEYS[k] holds the time (ms) of the last event (refusal,
--                    abandoned call); DEFER until that time + period_ms.
--     F j max_age_ms retry_ms x
--                    freshness: DEFER (retry_ms) unless meta field j (refreshed_at, ms) is
--                    within max_age_ms of now, or exempted.
--     W retry_ms x   calling window: the engine computed retry_ms (> 0: outside it now);
--                    DEFER unless exempted (consent to calls outside hours).
--     L k limit window_ms
--                    attempt log (frequency cap, trunk CPS): KEYS[k] is a STRING of packed
--                    big-endian doubles (attempt times, ms, in time order); DEFER when
--                    `limit` attempts are inside the window, until the oldest of them
--                    leaves it.
--     X seen limit retry_ms
--                    an attempt log read (and reserved) by a call of its own: DEFER
--                    (retry_ms) when seen >= limit.
--                    x is a bit mask of the earlier A/H checks that exempt (bit i-1: check
--                    i), 0 for none.
--   e                "0", or "1" followed by the audit entry of a recorded decision:
--     stream         index in KEYS of the group's audit stream
--     min_id_ms      entries of the stream older than this are trimmed (MINID ~)
--     max_len        and beyond this many entries (MAXLEN ~; checked on one append in 8)
--     head           the entry's fields known in-process: a JSON object's text without
--                    its closing "}"
--     shadow         the static rules' shadow reasons ("a,b")
--     nc labels      per check "reason\trule" (reason code, rule id)
--
-- BLOCK checks decide in order (the first wins). Among DEFER checks the longest wait wins.
-- Replies with one flat array: per decision either
--   1, decided, retry_ms, then nc results      (decided: 1-based index of the deciding
--                                               check, 0: allowed)
--   0, then the nf meta values                 (STALE, see above; false: absent)
-- results[i] = what check i saw: 0/1 for A H B C M (1 = member / valid consent), ms left
-- or 0 for R, age ms or -1 (never refreshed) for F, retry_ms for W, entries inside the
-- window for L and X.
-- When record is "1" and e is "1", the decision's audit entry (gate/core/evidence.py
-- FIELDS: the head completed with verdict, reason, rule, counters, shadow, retry_after_s)
-- is appended to the stream as one field "e" (JSON), whatever the verdict: the evidence
-- and the counters are one atomic fact.
-- Writes only when nothing decided and record is "1": inserts now_ms, in time order, into
-- every attempt log that holds fewer than `limit` live entries (a shadow cap at its limit
-- stops growing), and sets each log to expire when its newest entry leaves the window.
-- A real attempt is never dropped whatever now_ms is sent: entries are removed only once
-- they left the window by the clock of the attempt AND by Redis's own clock (TIME), so an
-- attempt dated in the future erases nothing; entries "from the future" (a gate whose
-- clock runs ahead, within the callers' documented skew) are kept and counted.

local call, unpack, tonumber, floor = redis.call, unpack, tonumber, math.floor
local pack, unpack_double = struct.pack, struct.unpack

-- Index of the first entry of a packed log later than `bound` (n + 1 if none).
local function first_after(raw, n, bound)
  local lo, hi = 1, n + 1
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if unpack_double(">d", raw, mid * 8 - 7) > bound then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

local replies, r = {}, 0
local pos = 2
local clock_ms

for _ = 1, tonumber(ARGV[1]) do
  local now, record, member, token = tonumber(ARGV[pos]), ARGV[pos + 1] == "1", ARGV[pos + 2], ARGV[pos + 3]
  local meta_index, nf = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
  pos = pos + 6
  local seen_meta, stale = nil, false
  if nf > 0 then
    seen_meta = call("HMGET", KEYS[meta_index], unpack(ARGV, pos, pos + nf - 1))
    for j = 1, nf do
      local expected = ARGV[pos + nf + j - 1]
      if expected ~= "*" and (seen_meta[j] or "") ~= expected then
        stale = true
      end
    end
    pos = pos + 2 * nf
  end
  local nc = tonumber(ARGV[pos])
  pos = pos + 1
  local results, logs, kinds, shadowed = {}, {}, {}, {}
  local block, defer, retry = 0, 0, 0

  local function exempted(mask)
    local j = 1
    while mask > 0 do
      if mask % 2 == 1 and results[j] == 1 then
        return true
      end
      mask, j = (mask - mask % 2) / 2, j + 1
    end
    return false
  end

  for i = 1, nc do
    local letter = ARGV[pos]
    local kind = string.upper(letter)
    local shadow = kind ~= letter
    local decides, wait, seen = false, 0, 0
    kinds[i] = kind
    if kind == "A" or kind == "B" or kind == "M" then
      local k = tonumber(ARGV[pos + 1])
      if k > 0 and not stale then
        seen = call("SISMEMBER", KEYS[k], member)
      end
      if kind == "A" then
        pos = pos + 2
      else
        if kind == "B" then
          decides = seen == 1 and not exempted(tonumber(ARGV[pos + 2]))
        else
          decides = seen == 0 and not exempted(tonumber(ARGV[pos + 2]))
        end
        pos = pos + 3
      end
    elseif kind == "H" or kind == "C" then
      if not stale then
        local value = call("HGET", KEYS[tonumber(ARGV[pos + 1])], token)
        if value then
          local expiry = tonumber(string.match(value, ":(%d+)$") or "0")
          if expiry == 0 or expiry > now then
            seen = 1
          end
        end
      end
      if kind == "H" then
        pos = pos + 2
      else
        decides = seen == 0 and not exempted(tonumber(ARGV[pos + 2]))
        pos = pos + 3
      end
    elseif kind == "R" then
      if not stale then
        local event = tonumber(call("GET", KEYS[tonumber(ARGV[pos + 1])]) or "0")
        local left = event > 0 and event + tonumber(ARGV[pos + 2]) - now or 0
        seen = left > 0 and left or 0
      end
      decides, wait = seen > 0, seen
      pos = pos + 3
    elseif kind == "F" then
      local refreshed = tonumber(seen_meta and seen_meta[tonumber(ARGV[pos + 1])] or "-1")
      seen = refreshed < 0 and -1 or now - refreshed
      decides = (refreshed < 0 or seen > tonumber(ARGV[pos + 2])) and not exempted(tonumber(ARGV[pos + 4]))
      wait = tonumber(ARGV[pos + 3])
      pos = pos + 5
    elseif kind == "W" then
      seen = tonumber(ARGV[pos + 1])
      decides = seen > 0 and not exempted(tonumber(ARGV[pos + 2]))
      wait = seen
      pos = pos + 3
    elseif kind == "L" then
      local key, limit, window = KEYS[tonumber(ARGV[pos + 1])], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
      if not stale then
        local raw = call("GET", key) or ""
        local n = #raw / 8
        local first = first_after(raw, n, now - window)
        seen = n - first + 1
        logs[i] = {key, raw, n, limit, window}
        if seen >= limit then
          decides = true
          wait = unpack_double(">d", raw, (first + seen - limit) * 8 - 7) + window - now
        end
      end
      pos = pos + 4
    elseif kind == "X" then
      seen = tonumber(ARGV[pos + 1])
      decides, wait = seen >= tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
      pos = pos + 4
    else
      error("decide.lua: unknown check kind " .. tostring(letter))
    end
    results[i] = seen
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

  local evidence = ARGV[pos] == "1"
  local labels = pos + 6
  pos = evidence and labels + nc or pos + 1

  if stale then
    replies[r + 1] = 0
    r = r + 1
    for j = 1, nf do
      replies[r + j] = seen_meta[j]
    end
    r = r + nf
  else
    local decided = block > 0 and block or defer
    if record and evidence then
      local base = labels - 6
      local counters, shadow = {}, {}
      local static = ARGV[base + 5]
      if static ~= "" then
        shadow[1] = static
      end
      for i = 1, nc do
        if kinds[i] == "L" or kinds[i] == "X" then
          counters[#counters + 1] = string.match(ARGV[labels + i - 1], "\t(.*)$") .. "=" .. results[i]
        end
        if shadowed[i] then
          shadow[#shadow + 1] = string.match(ARGV[labels + i - 1], "^([^\t]*)")
        end
      end
      local verdict, reason, rule, retry_text = "ALLOW", "allowed", "", ""
      if decided > 0 then
        reason, rule = string.match(ARGV[labels + decided - 1], "^([^\t]*)\t(.*)$")
        if block > 0 then
          verdict = "BLOCK"
        else
          local ms = math.max(floor(retry), 1)
          retry_text = string.gsub(string.format("%d.%03d", floor(ms / 1000), ms % 1000), "%.?0+$", "")
          verdict = "DEFER"
        end
      end
      local stream = KEYS[tonumber(ARGV[base + 1])]
      call("XADD", stream, "MINID", "~", ARGV[base + 2], "*", "e", table.concat({
        ARGV[base + 4], ',"verdict":"', verdict, '","reason":"', reason, '","rule":"', rule,
        '","counters":"', table.concat(counters, ","), '","shadow":"', table.concat(shadow, ","),
        '","retry_after_s":"', retry_text, '"}',
      }))
      if now % 8 == 0 then
        call("XTRIM", stream, "MAXLEN", "~", ARGV[base + 3])
      end
    end
    if record and decided == 0 then
      for i = 1, nc do
        local log = logs[i]
        if log and results[i] < log[4] then
          local key, raw, n, window = log[1], log[2], log[3], log[5]
          if not clock_ms then
            local clock = call("TIME")
            clock_ms = tonumber(clock[1]) * 1000 + floor(tonumber(clock[2]) / 1000)
          end
          -- Drop what left the window by both clocks; insert now after entries <= now.
          local drop = first_after(raw, n, math.min(now, clock_ms) - window) - 1
          local at = first_after(raw, n, now)
          local newest = n >= at and unpack_double(">d", raw, n * 8 - 7) or now
          call("SET", key, string.sub(raw, drop * 8 + 1, (at - 1) * 8) .. pack(">d", now) .. string.sub(raw, (at - 1) * 8 + 1),
            "PX", math.ceil(math.max(window, newest + window - clock_ms)))
        end
      end
    end
    replies[r + 1], replies[r + 2], replies[r + 3] = 1, decided, retry
    r = r + 3
    for i = 1, nc do
      replies[r + i] = results[i]
    end
    r = r + nc
  end
end
return replies
