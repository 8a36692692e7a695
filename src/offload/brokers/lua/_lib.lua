-- Prelude shared by every per-queue script (prepended when the scripts are read).
--
-- KEYS, in this order, all under one hash tag {<prefix>:<queue>} so a queue lives in one
-- cluster slot:
--   q       hash: policy (rate, cap, mc, lease, dedup), paused, bucket (tok, ts), seq
--   due     zset: id -> visible_at, for ready tasks (scheduled ones have a future score)
--   leased  zset: id -> lease expiry
--   tasks   hash: id -> record (msgpack, see pack/unpack_record below)
--   dead    zset: id -> failed_at
--   names   hash: name -> id, while a named task exists (any state)
--   nexp    zset: name -> end of its dedup window, after the task was removed
--   wake    list: tokens that idle workers BLPOP on
--
-- Times are whole microseconds since the epoch on the server's clock (TIME): exact in a
-- Lua number and in a zset score, and returned to the client as integers. Policy durations
-- (lease, dedup, rate) are stored in seconds, as declared.
local K_Q, K_DUE, K_LEASED, K_TASKS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_DEAD, K_NAMES, K_NEXP, K_WAKE = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local DEFAULT_LEASE, DEFAULT_DEDUP = 60, 3600
local US = 1000000

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * US + tonumber(t[2]), t
end

-- A score bound as text: integral microseconds, never in exponent notation.
local function bound(x, exclusive)
  return (exclusive and '(' or '') .. string.format('%.0f', x)
end

-- A record is ten concatenated msgpack values: state ('r' ready, 'l' leased, 'd' dead),
-- attempts, first_attempt_at (0: none), enqueued_at, token ('': none), name ('': none),
-- payload (opaque bytes), error, traceback, failed_at (0: none). Fields are only appended.
local function pack(r)
  return cmsgpack.pack(r.s, r.a, r.f, r.e, r.k, r.n, r.p, r.err, r.tb, r.fa)
end

local STATES = { r = true, l = true, d = true }

-- The record table; or false, reason when the value is not a record these scripts wrote.
local function unpack_record(raw)
  local ok, s, a, f, e, k, n, p, err, tb, fa = pcall(cmsgpack.unpack, raw)
  if not ok then
    return false, 'not msgpack'
  end
  if type(fa) ~= 'number' then
    return false, 'missing fields'
  end
  if not STATES[s] or type(a) ~= 'number' or type(f) ~= 'number' or type(e) ~= 'number'
      or type(k) ~= 'string' or type(n) ~= 'string' or type(p) ~= 'string'
      or type(err) ~= 'string' or type(tb) ~= 'string' then
    return false, 'fields of the wrong type'
  end
  return { s = s, a = a, f = f, e = e, k = k, n = n, p = p, err = err, tb = tb, fa = fa }
end

-- nil when there is no record; false, reason, raw when it is unreadable.
local function load(id)
  local raw = redis.call('HGET', K_TASKS, id)
  if not raw then
    return nil
  end
  local r, why = unpack_record(raw)
  if r == false then
    return false, why, raw
  end
  return r
end

local function save(id, r)
  redis.call('HSET', K_TASKS, id, pack(r))
end

-- Records of several ids in one call: {id = record | false}; missing ids are absent.
-- `bad` collects {id, reason, raw} of unreadable ones.
local function load_many(ids, bad)
  local out = {}
  if #ids == 0 then
    return out
  end
  local raws = redis.call('HMGET', K_TASKS, unpack(ids))
  for i, id in ipairs(ids) do
    local raw = raws[i]
    if raw then
      local r, why = unpack_record(raw)
      out[id] = r
      if r == false and bad then
        bad[#bad + 1] = { id, why, raw }
      end
    end
  end
  return out
end

-- redis.call(cmd, key, unpack(args)) in chunks (Lua's stack bounds unpack), none if empty.
local function call_many(cmd, key, args)
  local n = #args
  for i = 1, n, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(n, i + 3999)))
  end
end

-- One token is enough: it wakes one idle worker, whose claim passes the baton on.
local function wake()
  if redis.call('LLEN', K_WAKE) == 0 then
    redis.call('LPUSH', K_WAKE, '1')
  end
end

-- Dead-letter a record these scripts cannot read, keeping its raw bytes as the payload.
local function bury_corrupt(id, raw, why, now)
  save(id, { s = 'd', a = 0, f = 0, e = 0, k = '', n = '', p = raw,
             err = 'corrupt task record (' .. why .. '): dead-lettered by the broker',
             tb = '', fa = now })
  redis.call('ZREM', K_DUE, id)
  redis.call('ZREM', K_LEASED, id)
  redis.call('ZADD', K_DEAD, now, id)
end

local function dedup_window()
  return (tonumber(redis.call('HGET', K_Q, 'dedup')) or DEFAULT_DEDUP) * US
end

-- Keep a removed task's name reserved for the queue's dedup window.
local function retire_name(id, name, now, window)
  if name == '' then
    return
  end
  if redis.call('HGET', K_NAMES, name) == id then
    redis.call('HDEL', K_NAMES, name)
  end
  if window > 0 then
    redis.call('ZADD', K_NEXP, now + window, name)
  end
end

-- Whether at least one task is claimable now (due, or an expired lease).
local function any_due(now)
  return #redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'LIMIT', 0, 1) > 0
      or #redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, 1) > 0
end

-- Leases from ARGV (id, token, ...) that are still held: list of {id, record}.
local function held_leases()
  local ids = {}
  for i = 1, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
  end
  local recs = load_many(ids)
  local out = {}
  for i = 1, #ARGV, 2 do
    local r = recs[ARGV[i]]
    if r and r.s == 'l' and r.k == ARGV[i + 1] then
      out[#out + 1] = { ARGV[i], r }
      recs[ARGV[i]] = nil -- the same lease twice in one call counts once
    end
  end
  return out
end
