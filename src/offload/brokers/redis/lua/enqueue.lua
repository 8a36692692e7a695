#!lua
-- enqueue(id, name, payload, eta, delay, ...): five arguments per task. `eta` is epoch
-- seconds ('' : now + `delay` seconds); `name` '' : none. Returns per task 1 (created, or
-- that id exists already: enqueue is idempotent by id) or 0 (the name exists in the queue
-- or is inside its dedup window). Parked workers hear of it (notify_parked): a task due
-- now goes straight to one of them.
local now, t = clock()

local function visible_at(i)
  local eta = tonumber(ARGV[i + 3])
  if eta then
    return math.floor(eta * US + 0.5)
  end
  return now + math.floor((tonumber(ARGV[i + 4]) or 0) * US + 0.5)
end

local function record(i)
  return cmsgpack.pack('r', 0, 0, now, '', ARGV[i + 1], ARGV[i + 2], '', '', 0)
end

if #ARGV == 5 and ARGV[2] == '' then
  -- One unnamed task, the common one-by-one send: as few calls as possible.
  if redis.call('HSETNX', K_TASKS, ARGV[1], record(1)) == 1 then
    local at = visible_at(1)
    redis.call('ZADD', K_DUE, at, ARGV[1])
    notify_parked(now, t, at <= now and 1 or 0)
  end
  return { 1 }
end

local ids = {}
for i = 1, #ARGV, 5 do
  ids[#ids + 1] = ARGV[i]
end
local exists = redis.call('HMGET', K_TASKS, unpack(ids))
local out, hset, zadd, taken, seen = {}, {}, {}, {}, {}
local due_now = 0
for j = 1, #ids do
  local i = j * 5 - 4
  local id, name = ARGV[i], ARGV[i + 1]
  local ok = 1
  if not exists[j] and not seen[id] then
    if name ~= '' then
      if taken[name] or redis.call('HEXISTS', K_NAMES, name) == 1 then
        ok = 0
      else
        local until_ = tonumber(redis.call('ZSCORE', K_NEXP, name))
        if until_ and until_ > now then
          ok = 0
        elseif until_ then
          redis.call('ZREM', K_NEXP, name)
        end
      end
    end
    if ok == 1 then
      hset[#hset + 1] = id
      hset[#hset + 1] = record(i)
      local at = visible_at(i)
      zadd[#zadd + 1] = at
      zadd[#zadd + 1] = id
      if at <= now then
        due_now = due_now + 1
      end
      if name ~= '' then
        taken[name] = true
        redis.call('HSET', K_NAMES, name, id)
      end
      seen[id] = true -- the same id twice in one batch is created once
    end
  end
  out[j] = ok
end
if #hset > 0 then
  call_many('HSET', K_TASKS, hset)
  call_many('ZADD', K_DUE, zadd)
  notify_parked(now, t, due_now)
end
return out
