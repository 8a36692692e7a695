#!lua flags=allow-oom
-- inspect(op, ...): the task inspection calls (TaskInspection), off the hot path.
--   get, id          -> {now, fields of the task} ({now} when there is none)
--   list, cursor, count, ends, last, n
--                    -> {now, next cursor|false, count, ends, last, fields of up to n tasks}
--   run, id          -> 1 when the task is ready (made due now if it was scheduled), else 0
--   drop             -> how many tasks the queue had; every key of the queue is deleted
-- Fields per task: id, name|false, payload, state ('r', 'l', 'd'), eta (the score of its
-- index: due time, lease expiry or failed_at), attempts, first_attempt_at, enqueued_at,
-- error, traceback. Times in microseconds on the server's clock.
--
-- `list` pages through the task hash with HSCAN from `cursor`, in no particular order, so a
-- page costs O(page) and enqueue and ack keep no index for it. HSCAN returns whole batches
-- (buckets of the hash; all of a small listpack-encoded hash at once); a batch that fits in
-- the page's room is returned whole, one that does not ends the page and is read again by
-- the next one; only a page's first batch larger than the page is split: its ids are sorted
-- and the page ends at `last`, the next page reading the same batch again (same cursor and
-- `count`) and skipping ids up to `last`, provided the scan still `ends` at the same cursor
-- (the hash was not resized meanwhile; otherwise the batch comes back whole). The reply's
-- cursor is false when the scan is complete; `last` is '' unless the page split a batch.
-- As HSCAN guarantees: a task present for the whole listing comes back, once while the hash
-- is not resized; one added or removed meanwhile may or may not.
local op = ARGV[1]
local now, t = clock()

local function append_task(out, id, r)
  local eta
  if r.s == 'r' then
    eta = tonumber(redis.call('ZSCORE', K_DUE, id)) or now
  elseif r.s == 'l' then
    eta = tonumber(redis.call('ZSCORE', K_LEASED, id)) or now
  else
    eta = r.fa
  end
  local n = #out
  out[n + 1] = id
  out[n + 2] = r.n ~= '' and r.n or false
  out[n + 3] = r.p
  out[n + 4] = r.s
  out[n + 5] = eta
  out[n + 6] = r.a
  out[n + 7] = r.f
  out[n + 8] = r.e
  out[n + 9] = r.err
  out[n + 10] = r.tb
end

local function readable(id, r, why, raw)
  if r == false then -- shown as what a claim would make of it: a dead letter
    return { s = 'd', n = '', p = raw, a = 0, f = 0, e = 0, tb = '', fa = now,
             err = 'corrupt task record (' .. why .. ')' }
  end
  return r
end

-- At most this many HSCAN calls make one page, each reading about half the page's room, so a
-- page costs O(page size) whatever the queue's size (a sparse hash may end a page short).
local MAX_SCANS = 16

-- Byte order of two ids; Lua's `<` follows the server's collation locale, which may rank
-- two different ids equal.
local function before(a, b)
  if a < b then
    return true
  elseif b < a or a == b then
    return false
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

if op == 'get' then
  local out = { now }
  local r, why, raw = load(ARGV[2])
  if r ~= nil then
    append_task(out, ARGV[2], readable(ARGV[2], r, why, raw))
  end
  return out
elseif op == 'list' then
  local cursor, count, ends, last = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
  local limit = tonumber(ARGV[6])
  local out, seen, taken = { now, false, 0, '0', '' }, {}, 0
  for _ = 1, MAX_SCANS do
    local n = last ~= '' and count or math.max(1, math.floor((limit - taken) / 2))
    local reply = redis.call('HSCAN', K_TASKS, cursor, 'COUNT', n)
    -- a split batch read again: skip what the last page returned of it, unless the scan
    -- now ends elsewhere (the hash was resized): then return it all (repeat, never miss)
    local skip = last ~= '' and reply[1] == ends
    local batch, raws, flat = {}, {}, reply[2]
    for i = 1, #flat, 2 do
      local id = flat[i]
      if not seen[id] and not (skip and not before(last, id)) then
        seen[id] = true
        batch[#batch + 1] = id
        raws[id] = flat[i + 1]
      end
    end
    local room = limit - taken
    if #batch > room and taken > 0 then
      out[2] = cursor -- does not fit: the next page scans this batch again
      return out
    end
    table.sort(batch, before)
    for i = 1, math.min(room, #batch) do
      local id = batch[i]
      local r, why = unpack_record(raws[id])
      append_task(out, id, readable(id, r, why, raws[id]))
    end
    if #batch > room then -- one batch larger than the page: split it, in id order
      out[2], out[3], out[4], out[5] = cursor, n, reply[1], batch[room]
      return out
    end
    taken, cursor, last = taken + #batch, reply[1], ''
    if cursor == '0' then
      return out -- the scan is complete: no next page
    end
    if taken == limit then
      break
    end
  end
  out[2] = cursor
  return out
elseif op == 'run' then
  local r = load(ARGV[2])
  if not r or r.s ~= 'r' then
    return 0
  end
  local at = tonumber(redis.call('ZSCORE', K_DUE, ARGV[2]))
  if at == nil or at > now then
    redis.call('ZADD', K_DUE, now, ARGV[2])
    notify_parked(now, t, 1)
  end
  return 1
elseif op == 'drop' then
  local n = redis.call('HLEN', K_TASKS)
  for _, wid in ipairs(redis.call('ZRANGE', K_PARKED, 0, -1)) do
    if string.sub(wid, 1, 1) ~= '~' then
      redis.call('DEL', inbox_key(wid))
    end
  end
  redis.call('DEL', unpack(KEYS))
  redis.call('UNLINK', legacy_ids_key())
  return n
end
return redis.error_reply('inspect: unknown op ' .. tostring(op))
