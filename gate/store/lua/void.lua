-- void.lua: undo a recorded decision whose reply missed its deadline. The call already got
-- the fail mode, so nothing of that decision may stand: not its counted attempt, not its
-- audit entry. The store sends this behind the decision on the same connection (Redis runs
-- one connection's commands in order: if the decision ever runs, it runs first), or, when
-- that connection failed, later on another one.
--
-- KEYS[1]        the number's audit stream (used only when ARGV[1] is not "")
-- KEYS[2 ..]     the attempt logs the decision counts the call in when it allows it (its
--                own logs: frequency caps, a trunk's CPS), STRINGs of packed big-endian
--                doubles (times, ms) in time order
-- ARGV[1]        the decision's audit head, byte for byte as decide.lua appended it (field
--                "h"); "" when the decision wrote no audit entry
-- ARGV[2]        now_ms, the attempt time the decision inserts into its logs
-- ARGV[3]        how many of the stream's newest entries to search
--
-- With a head: the decision's entry is looked for among the stream's newest entries. Found:
-- it is deleted and, if the decision allowed the call (its reply "0,…"), one entry equal to
-- now_ms is removed from each log, keeping the log's expiry. Not found: the decision did not
-- run, nothing to undo. Without a head (audit off) the entries cannot tell: one entry equal
-- to now_ms is removed from each log that holds one.
-- Reply: "found,decided,removed": found 1 or 0 (-1 without a head), decided the entry's
-- deciding check (0: allowed; -1: no entry), removed the log entries taken out.

local call = redis.call
local head, now = ARGV[1], tonumber(ARGV[2])

-- Remove one entry equal to now from the log at `key` (the newest such, searched from the
-- end); 1 if one was removed. A log callgate did not write (a STRING whose length is not
-- a multiple of 8, a key of another type) is left as it is: 0.
local function uncount(key)
  local raw = redis.pcall("GET", key)
  if type(raw) ~= "string" or #raw % 8 ~= 0 then
    return 0
  end
  for j = #raw / 8, 1, -1 do
    local t = struct.unpack(">d", raw, j * 8 - 7)
    if t == now then
      local rest = string.sub(raw, 1, (j - 1) * 8) .. string.sub(raw, j * 8 + 1)
      -- Shrunk keeping the log's expiry: DEL, then SET what is left (not SET KEEPTTL
      -- alone: over maxmemory, noeviction, Redis refuses a script's first write if it may
      -- grow memory, SET, with OOM; once the script wrote, DEL being never refused, it
      -- does not, and an undo must go through then: it frees memory).
      local ttl = call("PTTL", key)
      call("DEL", key)
      if rest ~= "" then
        if ttl >= 0 then
          call("SET", key, rest, "PX", math.max(ttl, 1))
        else
          call("SET", key, rest)
        end
      end
      return 1
    end
  end
  return 0
end

local found, decided = -1, -1
if head ~= "" then
  found = 0
  for _, entry in ipairs(call("XREVRANGE", KEYS[1], "+", "-", "COUNT", ARGV[3])) do
    local fields = entry[2]
    if fields[1] == "h" and fields[2] == head then
      found = 1
      decided = tonumber(string.match(fields[4] or "", "^(%d+)") or "-1")
      call("XDEL", KEYS[1], entry[1])
      break
    end
  end
end
local removed = 0
if found == -1 or decided == 0 then
  for i = 2, #KEYS do
    removed = removed + uncount(KEYS[i])
  end
end
return found .. "," .. decided .. "," .. removed
