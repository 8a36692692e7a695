#!lua flags=allow-oom
-- inspect(op, ...): the task inspection calls (TaskInspection), off the hot path.
--   get, id          -> {now, fields of the task} ({now} when there is none)
--   list, after, n   -> {now, fields of up to n tasks with ids above `after`, id order}
--   run, id          -> 1 when the task is ready (made due now if it was scheduled), else 0
--   drop             -> how many tasks the queue had; every key of the queue is deleted
-- Fields per task: id, name|false, payload, state ('r', 'l', 'd'), eta (the score of its
-- index: due time, lease expiry or failed_at), attempts, first_attempt_at, enqueued_at,
-- error, traceback. Times in microseconds on the server's clock. `list` reads one page of
-- the `ids` index (O(log tasks + page)); it first rebuilds the index, once, when its size
-- differs from the task hash's (tasks written before the index existed).
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

if op == 'get' then
  local out = { now }
  local r, why, raw = load(ARGV[2])
  if r ~= nil then
    append_task(out, ARGV[2], readable(ARGV[2], r, why, raw))
  end
  return out
elseif op == 'list' then
  local after, limit = ARGV[2], tonumber(ARGV[3])
  if redis.call('ZCARD', K_IDS) ~= redis.call('HLEN', K_TASKS) then
    redis.call('DEL', K_IDS)
    local z = {}
    for _, id in ipairs(redis.call('HKEYS', K_TASKS)) do
      z[#z + 1] = 0
      z[#z + 1] = id
    end
    call_many('ZADD', K_IDS, z)
  end
  local out = { now }
  local low = after == '' and '-' or '(' .. after
  while limit > 0 do
    local page = redis.call('ZRANGEBYLEX', K_IDS, low, '+', 'LIMIT', 0, limit)
    if #page == 0 then
      break
    end
    local raws = redis.call('HMGET', K_TASKS, unpack(page))
    local stale = {}
    for i, id in ipairs(page) do
      if raws[i] then
        local r, why = unpack_record(raws[i])
        append_task(out, id, readable(id, r, why, raws[i]))
        limit = limit - 1
      else
        stale[#stale + 1] = id -- an index entry without a task: drop it, read on
      end
    end
    if #stale == 0 then
      break
    end
    call_many('ZREM', K_IDS, stale)
    low = '(' .. page[#page]
  end
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
  return n
end
return redis.error_reply('inspect: unknown op ' .. tostring(op))
