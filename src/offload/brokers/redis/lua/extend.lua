-- extend(id, token, ...): renew held leases by the queue's lease. Returns 1/0 per lease.
local now = clock()
local until_ = now + (tonumber(redis.call('HGET', K_Q, 'lease')) or DEFAULT_LEASE) * US
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
    out[j] = 1
  else
    out[j] = 0
  end
end
call_many('ZADD', K_LEASED, zadd)
return out
