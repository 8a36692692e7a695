#!lua flags=allow-oom
-- extend(id, token, ...): renew held leases by the queue's lease as stored now. Returns per
-- lease that lease in microseconds (the holder times its next heartbeat from it), or
-- false (nil) when the lease is no longer held.
local now = clock()
local lease = math.floor((tonumber(redis.call('HGET', K_Q, 'lease')) or DEFAULT_LEASE) * US + 0.5)
local until_ = now + lease
local ids = {}
for i = 1, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
end
local recs = load_many(ids)
local out, zadd = {}, {}
for j, id in ipairs(ids) do
  local r = recs[id]
  if r and r.s == 'l' and r.k == ARGV[2 * j] then
    zadd[#zadd + 1] = until_
    zadd[#zadd + 1] = id
    out[j] = lease
  else
    out[j] = false
  end
end
call_many('ZADD', K_LEASED, zadd)
return out
