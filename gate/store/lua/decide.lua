-- decide.lua: all the Redis work of a call decision, atomically (one EVALSHA).
--
-- The engine (gate/core/engine.py) plans an ordered list of checks; the store
-- (gate/store/client.py) names their keys in the number's slot group (gate/core/keys.py)
-- and sends them here; this script runs them and returns what each saw and which one
-- decided. The gate sends one decision per call; a scrub sends a batch of independent
-- decisions (same logic, one call). Every key is declared in KEYS: on Redis Cluster the
-- keys of one call share one slot (shared state in a slot of its own, a trunk's CPS log
-- or a campaign's call counts, is then read, and a CPS log reserved, by a call of its
-- own, and given here as an X check).
--
-- KEYS[1 .. #KEYS]   the keys the decisions name by index
-- ARGV[1]            n, the number of decisions; then, for each decision:
--   format           the struct format of `numbers` (big-endian: B byte, H 16-bit,
--                    d double; ms values are doubles, exact up to 2^53)
--   numbers          packed (struct.pack): the decision's numbers, in this order:
--     now_ms d       the attempt's time, milliseconds since the Unix epoch
--     record B       1: count the attempt in every attempt log if allowed; 0: evaluate only;
--                    2: evaluate only as far as the verdict needs (a scrub): checks after the
--                    first one that BLOCKs (not a shadow) are not run, and see -1
--     meta H         index in KEYS of the slot group's meta HASH (0 when nf is 0)
--     nf B, nc B     the meta fields read, the checks
--     evidence B     1: write the audit entry (then stream H, min_id_ms d, max_len d)
--     then each check: its kind's character code B (lowercase: a shadow check, evaluated
--     and reported, never deciding) and its own numbers:
--       A k:H            allow list: is the member in SET KEYS[k] (its bucket of the live
--                        version; k = 0: no such list)? Never decides.
--       H k:H            consent held: HGET KEYS[k] token = "granted_ms:expiry_ms" (expiry
--                        0: none); 1 if present and unexpired. Never decides.
--                        A and H are looked up only when a check they exempt would decide
--                        (else their result is -1: not needed).
--       B k:H x:d        block list: BLOCK if the member is in SET KEYS[k], unless exempted.
--       C k:H x:d        consent required: BLOCK unless HASH KEYS[k] holds an unexpired
--                        consent, or exempted.
--       M k:H x:d        presence required (an allow list, e.g. a scrubbed file): BLOCK
--                        unless the member is in SET KEYS[k], or exempted.
--       R k:H period:d   cool-off: KEYS[k] holds the time (ms) of the last event (refusal,
--                        abandoned call); DEFER until that time + period ms.
--       F j:B max_age:d retry:d x:d
--                        freshness: DEFER (retry ms) unless meta field j (refreshed_at, ms)
--                        is within max_age ms of now, or exempted.
--       W retry:d x:d    calling window: the engine computed retry ms (> 0: outside it
--                        now); DEFER unless exempted (consent to calls outside hours).
--       L k:H limit:d window:d
--                        attempt log (frequency cap, trunk CPS): KEYS[k] is a STRING of
--                        packed big-endian doubles (attempt times, ms, in time order);
--                        DEFER when `limit` attempts are inside the window, until the
--                        oldest of them leaves it.
--       D k:H c:B        reassigned number: KEYS[k] is the reassigned list's HASH token ->
--                        void_before_ms (the first instant after the UTC day of the
--                        number's last permanent disconnection); c is the index (in this
--                        decision) of the C check whose consent it judges. Sees 1 when
--                        that consent exists (expired or not) and was granted before
--                        void_before_ms: BLOCK, with no exemption (the new subscriber is
--                        nobody's customer or consenter).
--       Q k:H ceiling_ppm:d window:d min_live:d
--                        abandoned-call ceiling: KEYS[k] (a STRING, written only by
--                        call_counts.lua, never here) holds a campaign's calls per minute:
--                        packed big-endian doubles, the totals (live, abandoned) then one
--                        (minute_ms, live, abandoned) per minute in time order. A minute
--                        counts while any of it is inside the window: minute_ms + 60000 +
--                        window > now. DEFER when live >= min_live and abandoned * 10^6 >
--                        ceiling_ppm * live, until the oldest minutes leaving the window
--                        (with no new calls) bring it back under: sees that wait (ms), 0
--                        when under. Read from the oldest minute, CHUNK at a time
--                        (GETRANGE), only as far as the answer needs. Unreadable counts
--                        (see below) see the window: over the ceiling.
--       X seen:d limit:d retry:d
--                        shared state read (a CPS log: and reserved) by a call of its own
--                        in its own slot: DEFER (retry ms) when seen >= limit.
--                        x is a bit mask of the earlier A/H checks that exempt (bit i-1:
--                        check i), 0 for none.
--   member           the number as a list member (signed 64-bit integer, decimal)
--   token            the number's token (consent hashes)
--   nf field names, then nf expected values: HMGET meta fields. An expected value "*"
--                    accepts anything (e.g. a list's "L:r" refreshed_at); any other (a
--                    list version "version/bits", or "" for no list) must equal what the
--                    meta holds, else the decision is STALE: nothing is evaluated or
--                    written, and the reply carries what the meta holds (the caller's view
--                    of the lists is out of date: it retries with it).
--   head             (evidence 1 only) the audit entry's fields known in-process and the
--                    checks (JSON, gate/core/evidence.py)
--
-- BLOCK checks decide in order (the first wins). Among DEFER checks the longest wait wins
-- (the engine then moves a wait other than W's to the calling hours' next opening:
-- gate/core/engine.py ``outcome``; retry_ms here is the store's wait).
-- Replies with one array, a string per decision:
--   "decided,retry_ms,r1,r2…"  (decided: 1-based index of the deciding check, 0: allowed)
--   or, STALE, a nested array of the nf meta values (false: absent).
-- r_i = what check i saw: 0/1 for A H B C M (1 = member / valid consent; -1 for an A or H
-- that nothing needed), ms left or 0 for R, age ms or -1 (never refreshed) for F, retry ms
-- for W, entries inside the window for L and X, 0/1 for D (1: void consent), the wait (ms)
-- or 0 for Q; with record 2, -1 for the checks after the deciding BLOCK (not run: only
-- the verdict, decided and retry_ms, is meant to be read from such a reply).
-- When record is 1 and evidence is 1, the decision's audit entry is appended to the
-- stream, whatever the verdict: field "h" the head, field "r" the reply's string; the
-- evidence and the counters are one atomic fact (gate/core/evidence.py ``stored_record``
-- reads it back into the record). One append in 16 also trims the stream by age (MINID ~
-- min_id_ms), another by length (MAXLEN ~ max_len).
-- Writes only when nothing decided and record is 1: inserts now_ms, in time order, into
-- every attempt log that holds fewer than `limit` live entries (a shadow cap at its limit
-- stops growing), and sets each log to expire when its newest entry leaves the window.
-- A value callgate did not write (by hand, by another tool) fails closed, never errors: an
-- unreadable cool-off marker counts as an event now (the whole cool-off: R sees the
-- period), an unreadable consent as none (C and H see 0), an unreadable reassigned
-- entry as a consent void (D sees 1 when there is a consent to judge). The writers
-- (mark_max.lua, hash_max.lua, a consent import) replace such a value. An unreadable
-- attempt log (a STRING whose length is not a multiple of 8, or a key of another type)
-- counts as a log at its limit made now: L sees `limit` and DEFERs a whole window; it
-- is never written (nothing here replaces it: it holds the number until it expires or
-- is deleted), and void.lua and release.lua leave it alone; so does a log at its limit
-- whose wait would be NaN or over MAX_WAIT_MS (doubles of any bytes). Unreadable call
-- counts (a key of another type, a STRING whose length is not 16 + 24k, or whose wait
-- would be NaN or over MAX_WAIT_MS) count as over the ceiling: Q sees the window and DEFERs a whole window; nothing here writes them, and
-- call_counts.lua refuses to count a call in them (the caller says to delete the key).
-- A real attempt is never dropped whatever now_ms is sent: entries of a log whose window
-- is a minute or more are removed only once they left the window by the clock of the
-- attempt AND by Redis's own clock (TIME), so an attempt dated in the future erases
-- nothing (a CPS log, one second, trusts the attempt's clock: the callers bound its skew
-- to a few seconds); entries "from the future" (a gate whose clock runs ahead, within
-- that skew) are kept and counted.

local call, try_call = redis.call, redis.pcall
local unpack, tonumber, floor = unpack, tonumber, math.floor
local pack, unpack_struct, concat = struct.pack, struct.unpack, table.concat

-- A minute of a campaign's call counts (call_counts.lua) counts until it has wholly left
-- the window.
local MINUTE_MS = 60000

-- Minutes of call counts read at a time: a campaign's whole day is some 35 KB, but a
-- decision under the ceiling needs only the totals and the first minute still counting.
local CHUNK = 32

-- A wait (ms) longer than any a value callgate wrote can give (about 317 years; a reply
-- prints a number of 14 digits or more as 1e+14): the value it was read from is not
-- callgate's (a STRING of the right length, its doubles any bytes: NaN, 1e+194).
local MAX_WAIT_MS = 1e13

-- The wait (ms) until a campaign's call counts at `key` (see Q) fall back under the
-- ceiling at `now`, with no new calls; 0 when under it (or no counts); nil when the value
-- there is not callgate's: a key of another type (WRONGTYPE), or a STRING whose length is
-- not 16 + 24k. The length is judged by what GETRANGE returns (no STRLEN, a command more
-- per decision): a read shorter than asked ends the value, so the totals and every chunk
-- read must be whole; bytes past where the answer stops reading are not looked at.
local function ceiling_wait(key, now, ppm, window, min_live)
  local want = 16 + 24 * CHUNK
  -- An error reply (a key of another type: WRONGTYPE) is a table: unreadable.
  local raw = try_call("GETRANGE", key, 0, want - 1)
  if type(raw) ~= "string" then
    return nil
  end
  if #raw < want then
    if #raw == 0 then -- no counts (an empty STRING reads alike: it holds none)
      return 0
    end
    if (#raw - 16) % 24 ~= 0 then -- also any length under 16 (Lua's % is never negative)
      return nil
    end
  end
  local live, abandoned = unpack_struct(">dd", raw)
  local function over()
    return live >= min_live and abandoned * 1000000 > ppm * live
  end
  local wait, at, read, more = 0, 17, #raw, #raw == want
  while true do
    if at > #raw then -- this chunk is done: the next one, unless it was the last
      if not more then
        break
      end
      raw = call("GETRANGE", key, read, read + 24 * CHUNK - 1)
      read, at, more = read + #raw, 1, #raw == 24 * CHUNK
      if #raw == 0 then
        break
      end
      if #raw % 24 ~= 0 then -- the value ends inside an entry
        return nil
      end
    end
    local minute, l, a = unpack_struct(">ddd", raw, at)
    local leaves = minute + MINUTE_MS + window - now
    if leaves > 0 then -- inside the window: stop when under the ceiling
      if not over() then
        return wait
      end
      wait = leaves
    end
    live, abandoned, at = live - l, abandoned - a, at + 24
  end
  return wait -- every minute gone: nothing left to count
end

-- A time (ms since the Unix epoch) as callgate stores it: decimal digits, before the year
-- 2286 (so that the waits computed from it print as integers); nil for anything else.
local function stored_ms(value)
  if value and #value <= 13 and string.find(value, "^%d+$") then
    return tonumber(value)
  end
  return nil
end

-- A consent entry, "granted_ms:expiry_ms" (expiry 0: none): granted_ms, and whether it is
-- in force at `now`; nil, false for none (absent, or not in that form).
local function consent_at(value, now)
  local granted, expiry = string.match(value or "", "^(%-?%d+):(%d+)$")
  if not granted then
    return nil, false
  end
  expiry = tonumber(expiry)
  return tonumber(granted), expiry == 0 or expiry > now
end

-- Index of the first entry of a packed log later than `bound` (n + 1 if none).
local function first_after(raw, n, bound)
  local lo, hi = 1, n + 1
  while lo < hi do
    local mid = floor((lo + hi) / 2)
    if unpack_struct(">d", raw, mid * 8 - 7) > bound then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

-- Does one of the A/H checks in the bit mask hold the number (`member`, `token`)? Looked up
-- now (`lookups[j]`: check j's key, `lookups[-j]`: true for A), when `results[j]` is -1.
-- (A function of the script, not one made per decision: a closure costs an allocation.)
local function exempted(mask, results, lookups, member, token, now)
  local j = 1
  while mask > 0 do
    if mask % 2 == 1 then
      if results[j] == -1 then
        local key = lookups[j]
        local held = 0
        if not key then
          held = 0
        elseif lookups[-j] then
          held = call("SISMEMBER", key, member)
        else
          local _, valid = consent_at(call("HGET", key, token), now)
          held = valid and 1 or 0
        end
        results[j] = held
      end
      if results[j] == 1 then
        return true
      end
    end
    mask, j = (mask - mask % 2) / 2, j + 1
  end
  return false
end

-- The reply's usual numbers as text: table.concat and `..` format every other number
-- (sprintf), a sizeable share of a decision's time in the script. (Constants: the script
-- runs this at each call.)
local TEXT = {[-1] = "-1", [0] = "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}

local replies = {}
local pos = 2
local clock_ms

for d = 1, tonumber(ARGV[1]) do
  local v = {unpack_struct(ARGV[pos], ARGV[pos + 1])}
  local member, token = ARGV[pos + 2], ARGV[pos + 3]
  local now, record, meta, nf, nc, evidence = v[1], v[2] == 1, v[3], v[4], v[5], v[6] == 1
  local verdict_only = v[2] == 2
  local p = evidence and 10 or 7
  pos = pos + 4
  local seen_meta, stale = nil, false
  if nf > 0 then
    seen_meta = call("HMGET", KEYS[meta], unpack(ARGV, pos, pos + nf - 1))
    for j = 1, nf do
      local expected = ARGV[pos + nf + j - 1]
      if expected ~= "*" and (seen_meta[j] or "") ~= expected then
        stale = true
      end
    end
    pos = pos + 2 * nf
  end
  local results, lookups, granted_ms = {}, {}, {}
  local logs, block, defer, retry = nil, 0, 0, 0

  for i = 1, nc do
    local kind = v[p]
    local shadow = kind >= 97
    if shadow then
      kind = kind - 32
    end
    local decides, wait, seen = false, 0, 0
    if kind == 65 or kind == 72 then -- A, H
      seen = -1
      if v[p + 1] > 0 and not stale then
        lookups[i] = KEYS[v[p + 1]]
        lookups[-i] = kind == 65
      end
      p = p + 2
    elseif kind == 66 or kind == 77 then -- B, M
      if v[p + 1] > 0 and not stale then
        seen = call("SISMEMBER", KEYS[v[p + 1]], member)
      end
      if kind == 66 then
        decides = seen == 1 and not exempted(v[p + 2], results, lookups, member, token, now)
      else
        decides = seen == 0 and not exempted(v[p + 2], results, lookups, member, token, now)
      end
      p = p + 3
    elseif kind == 67 then -- C
      if not stale then
        local granted, valid = consent_at(call("HGET", KEYS[v[p + 1]], token), now)
        granted_ms[i] = granted
        seen = valid and 1 or 0
      end
      decides = seen == 0 and not exempted(v[p + 2], results, lookups, member, token, now)
      p = p + 3
    elseif kind == 82 then -- R
      if not stale then
        local marker = call("GET", KEYS[v[p + 1]])
        local event = marker and (stored_ms(marker) or now) or 0 -- unreadable: an event now
        local left = event > 0 and event + v[p + 2] - now or 0
        seen = left > 0 and left or 0
      end
      decides, wait = seen > 0, seen
      p = p + 3
    elseif kind == 70 then -- F
      local refreshed = tonumber(seen_meta and seen_meta[v[p + 1]] or "-1")
      seen = refreshed < 0 and -1 or now - refreshed
      decides = (refreshed < 0 or seen > v[p + 2])
        and not exempted(v[p + 4], results, lookups, member, token, now)
      wait = v[p + 3]
      p = p + 5
    elseif kind == 87 then -- W
      seen = v[p + 1]
      decides = seen > 0 and not exempted(v[p + 2], results, lookups, member, token, now)
      wait = seen
      p = p + 3
    elseif kind == 76 then -- L
      local limit, window = v[p + 2], v[p + 3]
      if not stale then
        local key = KEYS[v[p + 1]]
        -- An error reply (a key of another type: WRONGTYPE) is a table: unreadable.
        local raw = try_call("GET", key) or ""
        if type(raw) ~= "string" or #raw % 8 ~= 0 then
          -- Unreadable: a log at its limit, as if all of it were now (a whole window);
          -- not in `logs`: never written here.
          seen, decides, wait = limit, true, window
        else
          local n = #raw / 8
          local first = first_after(raw, n, now - window)
          seen = n - first + 1
          logs = logs or {}
          logs[i] = {key, raw, n, limit, window, first}
          if seen >= limit then
            decides = true
            wait = unpack_struct(">d", raw, (first + seen - limit) * 8 - 7) + window - now
            if not (wait > 0 and wait < MAX_WAIT_MS) then -- NaN too: unreadable, as above
              seen, wait, logs[i] = limit, window, nil
            end
          end
        end
      end
      p = p + 4
    elseif kind == 68 then -- D
      local granted = granted_ms[v[p + 2]]
      if granted and not stale then
        local entry = call("HGET", KEYS[v[p + 1]], token)
        local void = entry and stored_ms(entry)
        if entry and (not void or granted < void) then -- unreadable: void
          seen = 1
        end
      end
      decides = seen == 1
      p = p + 3
    elseif kind == 81 then -- Q
      if not stale then
        -- Unreadable: over the ceiling, as if all of it were now (a whole window).
        seen = ceiling_wait(KEYS[v[p + 1]], now, v[p + 2], v[p + 3], v[p + 4])
        if not (seen and seen >= 0 and seen < MAX_WAIT_MS) then -- nil, NaN, 1e+194
          seen = v[p + 3]
        end
      end
      decides, wait = seen > 0, seen
      p = p + 5
    elseif kind == 88 then -- X
      seen = v[p + 1]
      decides, wait = seen >= v[p + 2], v[p + 3]
      p = p + 4
    else
      error("decide.lua: unknown check kind " .. tostring(kind))
    end
    results[i] = seen
    if decides and not shadow then
      if kind == 66 or kind == 67 or kind == 77 or kind == 68 then
        if block == 0 then
          block = i
        end
      elseif defer == 0 or wait > retry then
        defer, retry = i, wait
      end
    end
    if verdict_only and block > 0 then -- nothing later can change the verdict
      for j = i + 1, nc do
        results[j] = -1
      end
      break
    end
  end

  if stale then
    replies[d] = seen_meta
  else
    local decided = block > 0 and block or defer
    local texts = {TEXT[decided] or decided, TEXT[retry] or floor(retry)}
    for i = 1, nc do
      local seen = results[i]
      texts[i + 2] = TEXT[seen] or seen
    end
    local reply = concat(texts, ",")
    replies[d] = reply
    if record and evidence then
      -- Trimmed by the append itself (XADD's own trim: whole nodes, bounded work).
      local stream, head, turn = KEYS[v[7]], ARGV[pos], now % 16
      if turn == 0 then
        call("XADD", stream, "MINID", "~", string.format("%d", v[8]), "*", "h", head, "r", reply)
      elseif turn == 8 then
        call("XADD", stream, "MAXLEN", "~", string.format("%d", v[9]), "*", "h", head, "r", reply)
      else
        call("XADD", stream, "*", "h", head, "r", reply)
      end
    end
    if record and decided == 0 and logs then
      for i = 1, nc do
        local log = logs[i]
        if log and results[i] < log[4] then
          local key, raw, n, window = log[1], log[2], log[3], log[5]
          local last = n > 0 and unpack_struct(">d", raw, n * 8 - 7) or now
          -- Drop what left the window by both clocks (Redis's is read only when the
          -- attempt's would drop something, and for windows of a minute or more: a
          -- CPS log trusts the attempt's clock, within the callers' skew); insert now
          -- after the entries <= now (at the end, but for a gate whose clock is behind).
          local drop = log[6] - 1
          if window >= 60000 and (drop > 0 or last > now) then
            if not clock_ms then
              local clock = call("TIME")
              clock_ms = tonumber(clock[1]) * 1000 + floor(tonumber(clock[2]) / 1000)
            end
            drop = first_after(raw, n, math.min(now, clock_ms) - window) - 1
          end
          local kept
          if last <= now then
            kept = string.sub(raw, drop * 8 + 1) .. pack(">d", now)
          else
            local at = first_after(raw, n, now)
            kept = string.sub(raw, drop * 8 + 1, (at - 1) * 8) .. pack(">d", now) .. string.sub(raw, at * 8 - 7)
          end
          local ttl = window
          if last > now then -- entries later than now: live until they leave the window
            ttl = math.max(window, last + window - (clock_ms or now))
          end
          call("SET", key, kept, "PX", math.ceil(ttl))
        end
      end
    end
  end
  if evidence then
    pos = pos + 1
  end
end
return replies
