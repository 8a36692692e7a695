#!lua flags=no-writes
-- stats(): {ready, scheduled, leased, dead, paused, then the stored policy: rate, cap, mc,
-- lease, dedup (each false when unset; lease false: never declared), then since when the
-- oldest claimable task has been (false: none)} on the server's clock. Read only.
local now = clock()
local due_now = redis.call('ZCOUNT', K_DUE, '-inf', now)
local expired = redis.call('ZCOUNT', K_LEASED, '-inf', now)
local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'lease', 'dedup')
local oldest = false
for _, k in ipairs({ K_DUE, K_LEASED }) do
  local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if #first > 0 and tonumber(first[2]) <= now
      and (oldest == false or tonumber(first[2]) < oldest) then
    oldest = tonumber(first[2])
  end
end
return {
  due_now + expired,
  redis.call('ZCOUNT', K_DUE, bound(now, true), '+inf'),
  redis.call('ZCOUNT', K_LEASED, bound(now, true), '+inf'),
  redis.call('ZCARD', K_DEAD),
  q[1] == '1' and 1 or 0,
  q[2], q[3], q[4], q[5], q[6],
  oldest,
}
