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
--   parked  zset: worker id -> deadline, for every idle worker blocked on the server: on
--           its inbox (and the wake list), or, for an id starting with '~', on the wake
--           list only (a Redis Cluster worker)
--
-- A parked worker's inbox, the list `{<prefix>:<queue>}:inbox:<worker id>`, is not among
-- KEYS (its name is only known inside the script) but shares the queue's hash tag, so it
-- lives in the queue's slot: enqueue leases a task to a parked worker and pushes it there,
-- and the worker's BLPOP on the inbox is its claim (one hop instead of a wake-up and a
-- claim).
--
-- An earlier version also kept `{<prefix>:<queue>}:ids`, a zset of every task id for the
-- task listing; nothing reads or writes it now (the listing scans `tasks` with HSCAN), and
-- purge and drop delete one left behind (legacy_ids_key).
--
-- Times are whole microseconds since the epoch on the server's clock (TIME): exact in a
-- Lua number and in a zset score, and returned to the client as integers. Policy durations
-- (lease, dedup, rate) are stored in seconds, as declared.
local K_Q, K_DUE, K_LEASED, K_TASKS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_DEAD, K_NAMES, K_NEXP, K_WAKE = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_PARKED = KEYS[9]

local DEFAULT_LEASE, DEFAULT_DEDUP = 60, 3600
-- A hand-off's first lease, in seconds, when the queue's is longer: the worker renews it to
-- the full lease on its first heartbeat, and a task handed to a worker that died parked is
-- claimable by another within seconds instead of a whole lease.
local HANDOFF_LEASE = 3
local US = 1000000

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * US + tonumber(t[2]), t
end

-- A score bound as text: integral microseconds, never in exponent notation.
local function bound(x, exclusive)
  return (exclusive and '(' or '') .. string.format('%.0f', x)
end

-- A record is eleven concatenated msgpack values: state ('r' ready, 'l' leased, 'd' dead),
-- attempts, first_attempt_at (0: none), enqueued_at, token ('': none), name ('': none),
-- payload (opaque bytes), error, traceback, failed_at (0: none), and the id of the parked
-- worker the current lease was handed to ('': claimed, not handed; see take_unread).
-- Fields are only appended: a record of ten (an older version's) reads with w = ''.
local function pack(r)
  return cmsgpack.pack(r.s, r.a, r.f, r.e, r.k, r.n, r.p, r.err, r.tb, r.fa, r.w)
end

local STATES = { r = true, l = true, d = true }

-- The record table; or false, reason when the value is not a record these scripts wrote.
local function unpack_record(raw)
  local ok, s, a, f, e, k, n, p, err, tb, fa, w = pcall(cmsgpack.unpack, raw)
  if not ok then
    return false, 'not msgpack'
  end
  if type(fa) ~= 'number' then
    return false, 'missing fields'
  end
  if not STATES[s] or type(a) ~= 'number' or type(f) ~= 'number' or type(e) ~= 'number'
      or type(k) ~= 'string' or type(n) ~= 'string' or type(p) ~= 'string'
      or type(err) ~= 'string' or type(tb) ~= 'string'
      or (w ~= nil and type(w) ~= 'string') then
    return false, 'fields of the wrong type'
  end
  return { s = s, a = a, f = f, e = e, k = k, n = n, p = p, err = err, tb = tb, fa = fa,
           w = w or '' }
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

-- A leased record back to ready (visible at `at`) without counting the attempt.
local function release_record(id, r, at)
  r.s, r.k, r.w, r.a = 'r', '', '', math.max(0, r.a - 1)
  if r.a == 0 then
    r.f = 0
  end
  save(id, r)
  redis.call('ZREM', K_LEASED, id)
  redis.call('ZADD', K_DUE, at, id)
end

-- Dead-letter a record these scripts cannot read, keeping its raw bytes as the payload.
local function bury_corrupt(id, raw, why, now)
  save(id, { s = 'd', a = 0, f = 0, e = 0, k = '', n = '', p = raw,
             err = 'corrupt task record (' .. why .. '): dead-lettered by the broker',
             tb = '', fa = now, w = '' })
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

-- Leases from ARGV (id, token, ...) from ARGV[first] on that are still held: list of
-- {id, record}.
local function held_leases(first)
  local ids = {}
  for i = first, #ARGV, 2 do
    ids[#ids + 1] = ARGV[i]
  end
  local recs = load_many(ids)
  local out = {}
  for i = first, #ARGV, 2 do
    local r = recs[ARGV[i]]
    if r and r.s == 'l' and r.k == ARGV[i + 1] then
      out[#out + 1] = { ARGV[i], r }
      recs[ARGV[i]] = nil -- the same lease twice in one call counts once
    end
  end
  return out
end

-- A claim's reply fields appended to `out`: id, name|false, payload, attempts,
-- first_attempt_at, enqueued_at, token, expired (1: the claim took over an expired lease).
local function append_claimed(out, id, r, expired)
  local n = #out
  out[n + 1] = id
  out[n + 2] = r.n ~= '' and r.n or false
  out[n + 3] = r.p
  out[n + 4] = r.a
  out[n + 5] = r.f
  out[n + 6] = r.e
  out[n + 7] = r.k
  out[n + 8] = expired and 1 or 0
end

local function inbox_key(wid)
  return string.sub(K_WAKE, 1, -5) .. 'inbox:' .. wid
end

-- The id index an earlier version kept beside `tasks` (same hash tag, so the same slot):
-- never written now; purge and drop delete one left behind so its memory comes back.
local function legacy_ids_key()
  return string.sub(K_WAKE, 1, -5) .. 'ids'
end

-- A hand-off as it sits in an inbox: the fields of a claim reply up to each task's token
-- (a hand-off is never expired), each as a 4-byte big-endian length and the bytes
-- (numbers as integer text, false as ''), read back by the broker's Python
-- (scripts.handed_from), by unpark and by take_unread below.
local function encode_fields(t)
  local parts = {}
  for i, v in ipairs(t) do
    if type(v) == 'number' then
      v = string.format('%.0f', v)
    elseif v == false then
      v = ''
    end
    parts[i] = struct.pack('>I4', #v) .. v
  end
  return table.concat(parts)
end

local function decode_fields(blob)
  local f, pos = {}, 1
  while pos <= #blob do
    local n, at = struct.unpack('>I4', blob, pos)
    f[#f + 1] = string.sub(blob, at, at + n - 1)
    pos = at + n
  end
  return f
end

-- Whether the lease `token` on task `id`, handed to worker `wid`, still sits unread in the
-- worker's inbox (the worker died, or stopped, before its BLPOP took it); if so it is
-- taken out. Such a lease ran out without its task ever running: it is no attempt.
local function take_unread(wid, id, token)
  local inbox = inbox_key(wid)
  for _, blob in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
    local f = decode_fields(blob)
    for i = 3, #f, 7 do
      if f[i] == id and f[i + 6] == token then
        redis.call('LREM', inbox, 1, blob)
        return true
      end
    end
  end
  return false
end

-- claim(limit) proper, shared by claim.lua and the hand-off in enqueue.lua: lease up to
-- `limit` claimable tasks, oldest visible_at first. Claimable: in `due` with score <= now,
-- or in `leased` with an expired lease (its worker died). Honours pause, max_concurrent and
-- the token bucket. `kept` ({id, record} leases the caller already holds, see unpark) come
-- first, their leases renewed. Given `wid` (a hand-off to that parked worker), only due
-- tasks are taken, never an expired lease (a hand-off is never expired), and each record
-- notes the worker. Returns {now, lease_until, then the fields of append_claimed per task}.
local function claim_batch(now, t, limit, kept, wid)
  local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'lease', 'tok', 'ts')
  local lease = tonumber(q[5]) or DEFAULT_LEASE
  if wid then
    lease = math.min(lease, HANDOFF_LEASE)
  end
  local until_ = now + lease * US
  local out = { now, until_ }
  for _, h in ipairs(kept) do
    redis.call('ZADD', K_LEASED, until_, h[1])
    append_claimed(out, h[1], h[2], false)
  end
  if q[1] == '1' or limit <= 0 then
    return out
  end
  local mc, active = tonumber(q[4]), 0
  if mc then
    active = redis.call('ZCOUNT', K_LEASED, bound(now, true), '+inf')
    limit = math.min(limit, mc - active)
  end
  local rate, tokens = tonumber(q[2]), nil
  if rate then
    local cap = tonumber(q[3]) or 1
    tokens = tonumber(q[6])
    local ts = tonumber(q[7])
    if tokens == nil or ts == nil then
      tokens = cap
    else
      tokens = math.min(cap, tokens + math.max(0, now - ts) / US * rate)
    end
    limit = math.min(limit, math.floor(tokens))
  end
  if limit <= 0 then
    return out
  end
  -- Candidates from both sets, merged by score.
  local d = redis.call('ZRANGEBYSCORE', K_DUE, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  local l = {}
  if not wid then
    l = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
  end
  local ids, from_due = {}, {}
  local di, li = 1, 1
  while #ids < limit and (di <= #d or li <= #l) do
    if li > #l or (di <= #d and tonumber(d[di + 1]) <= tonumber(l[li + 1])) then
      ids[#ids + 1] = d[di]
      from_due[d[di]] = true
      di = di + 2
    else
      ids[#ids + 1] = l[li]
      li = li + 2
    end
  end
  local bad = {}
  local recs = load_many(ids, bad)
  local prefix = t[1] .. t[2] .. '.' .. redis.call('HINCRBY', K_Q, 'seq', 1) .. '.'
  local hset, zadd, zrem, orphans_due, orphans_leased = {}, {}, {}, {}, {}
  local claimed = 0
  for _, id in ipairs(ids) do
    local r = recs[id]
    if r then
      claimed = claimed + 1
      local expired = not from_due[id]
      if expired and r.w ~= '' and r.s == 'l' and take_unread(r.w, id, r.k) then
        -- handed to a worker that never read it: that lease was no attempt
        expired, r.a = false, r.a - 1
        if r.a == 0 then
          r.f = 0
        end
      end
      r.s, r.a, r.k, r.w = 'l', r.a + 1, prefix .. claimed, wid or ''
      if r.f == 0 then
        r.f = now
      end
      hset[#hset + 1] = id
      hset[#hset + 1] = pack(r)
      zadd[#zadd + 1] = until_
      zadd[#zadd + 1] = id
      if from_due[id] then
        zrem[#zrem + 1] = id
      end
      append_claimed(out, id, r, expired)
    elseif r == nil then -- an index entry without a record: drop it
      local o = from_due[id] and orphans_due or orphans_leased
      o[#o + 1] = id
    end
  end
  call_many('HSET', K_TASKS, hset)
  call_many('ZADD', K_LEASED, zadd)
  call_many('ZREM', K_DUE, zrem)
  call_many('ZREM', K_DUE, orphans_due)
  call_many('ZREM', K_LEASED, orphans_leased)
  for _, b in ipairs(bad) do
    bury_corrupt(b[1], b[3], b[2], now)
  end
  if tokens ~= nil and claimed > 0 then
    tokens = tokens - claimed
    redis.call('HSET', K_Q, 'tok', tokens, 'ts', now)
  end
  if #ids < limit then
    -- This claim drained what was due: a leftover token would only wake someone for nothing.
    redis.call('DEL', K_WAKE)
  elseif (tokens == nil or tokens >= 1) and (mc == nil or active + claimed < mc)
      and any_due(now) then
    -- Work is left that another idle worker could take now: pass the baton.
    wake()
  end
  return out
end

-- Tell the parked workers about an enqueue of `n` tasks due now (0: only later ones). Up
-- to `n` of them, newest parked first, get one task each, leased to them and pushed to
-- their inbox; if one is left without (a wake-only worker, whose id starts with '~', or a
-- hand-off refused by pause, rate or max_concurrent, or a later eta), a wake token goes
-- out. With no worker parked nobody is blocked: every live worker claims before it blocks
-- again, and its park sees what is due, so there is nobody to wake.
local function notify_parked(now, t, n)
  local parked = redis.call('ZREVRANGEBYSCORE', K_PARKED, '+inf', bound(now, true),
    'LIMIT', 0, math.max(1, math.min(n, 8)))
  if #parked == 0 then
    return
  end
  local handed = 0
  for _, wid in ipairs(parked) do
    if handed >= n or string.sub(wid, 1, 1) == '~' then
      break
    end
    local out = claim_batch(now, t, 1, {}, wid)
    if #out == 2 then
      break
    end
    redis.call('ZREM', K_PARKED, wid)
    local inbox = inbox_key(wid)
    out[#out] = nil -- the expired flag: a hand-off never is
    redis.call('RPUSH', inbox, encode_fields(out))
    -- A worker that died parked leaves its inbox behind, read by the claim that takes
    -- the expired lease over (take_unread); gone an hour after the lease ran out.
    redis.call('PEXPIRE', inbox, math.floor((out[2] - now) / 1000) + 3600000)
    handed = handed + 1
  end
  if handed < #parked then
    wake()
  end
end

-- Worker `wid` stops being parked: take back what its inbox holds. Returns up to `limit`
-- {id, record} of the tasks it still holds a lease on; the rest go back to `due`.
local function unpark(wid, now, limit)
  redis.call('ZREM', K_PARKED, wid)
  local kept = {}
  local inbox = inbox_key(wid)
  local blobs = redis.call('LRANGE', inbox, 0, -1)
  if #blobs == 0 then
    return kept
  end
  redis.call('DEL', inbox)
  local released = false
  for _, blob in ipairs(blobs) do
    local f = decode_fields(blob)
    for i = 3, #f, 7 do
      local id, token = f[i], f[i + 6]
      local r = load(id)
      if r and r.s == 'l' and r.k == token then
        if #kept < limit then
          kept[#kept + 1] = { id, r }
        else
          release_record(id, r, now)
          released = true
        end
      end
    end
  end
  if released then
    wake()
  end
  return kept
end

-- Microseconds until a task of this queue may become claimable: 0 now, -1 not foreseeable
-- (empty, paused, or saturated with nothing expiring).
local function next_claimable(now)
  local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'tok', 'ts')
  if q[1] == '1' then
    return -1
  end
  local d = redis.call('ZRANGE', K_DUE, 0, 0, 'WITHSCORES')
  local l = redis.call('ZRANGE', K_LEASED, 0, 0, 'WITHSCORES')
  local at = nil
  if #d > 0 then
    at = tonumber(d[2])
  end
  if #l > 0 and (at == nil or tonumber(l[2]) < at) then
    at = tonumber(l[2])
  end
  if at == nil then
    return -1
  end
  local mc = tonumber(q[4])
  if mc and redis.call('ZCOUNT', K_LEASED, bound(now, true), '+inf') >= mc then
    -- saturated: the next chance is the earliest lease expiry (or an ack, which wakes us)
    at = math.max(at, tonumber(l[2]))
  end
  local rate = tonumber(q[2])
  if rate then
    local cap = tonumber(q[3]) or 1
    local tokens, ts = tonumber(q[5]), tonumber(q[6])
    if tokens ~= nil and ts ~= nil then
      tokens = math.min(cap, tokens + math.max(0, now - ts) / US * rate)
      if tokens < 1 then
        at = math.max(at, now + math.ceil((1 - tokens) / rate * US))
      end
    end
  end
  return math.max(0, at - now)
end

-- Park worker `wid` on this queue for `ttl` microseconds, unless something is claimable now
-- (`delay` 0): until its next claim, enqueue may hand it a task (notify_parked).
local function park(wid, ttl, now, delay)
  if delay ~= 0 and wid and wid ~= '' then
    redis.call('ZREMRANGEBYSCORE', K_PARKED, '-inf', now) -- workers that died parked
    redis.call('ZADD', K_PARKED, now + tonumber(ttl), wid)
  end
  return delay
end
