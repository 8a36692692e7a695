-- claim(limit): lease up to `limit` claimable tasks of this queue, oldest visible_at first.
-- Claimable: in `due` with score <= now, or in `leased` with an expired lease (its worker
-- died). Honours pause, max_concurrent and the token bucket, all on the server's clock.
-- Returns {now, lease_until, then per task: id, name|false, payload, attempts,
-- first_attempt_at, enqueued_at, token}.
local now, t = clock()
local limit = math.min(tonumber(ARGV[1]), 2000)
local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'lease', 'tok', 'ts')
local until_ = now + (tonumber(q[5]) or DEFAULT_LEASE) * US
local out = { now, until_ }
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
local l = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
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
    r.s, r.a, r.k = 'l', r.a + 1, prefix .. claimed
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
    local n = #out
    out[n + 1] = id
    out[n + 2] = r.n ~= '' and r.n or false
    out[n + 3] = r.p
    out[n + 4] = r.a
    out[n + 5] = r.f
    out[n + 6] = r.e
    out[n + 7] = r.k
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
