-- peek(wid, ttl): microseconds until a task of this queue may become claimable: 0 now, -1
-- not foreseeable (empty, paused, or saturated with nothing expiring). Given a worker id,
-- unless the answer is 0, the worker is also parked for `ttl` microseconds: enqueue may
-- then lease a task to it and push it to its inbox (hand_off in _lib.lua).
local now = clock()
local function park(delay)
  if delay ~= 0 and ARGV[1] and ARGV[1] ~= '' then
    redis.call('ZREMRANGEBYSCORE', K_PARKED, '-inf', now) -- workers that died parked
    redis.call('ZADD', K_PARKED, now + tonumber(ARGV[2]), ARGV[1])
  end
  return delay
end
local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'tok', 'ts')
if q[1] == '1' then
  return park(-1)
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
  return park(-1)
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
return park(math.max(0, at - now))
