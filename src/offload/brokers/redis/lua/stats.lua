-- stats(): {ready, scheduled, leased, dead, paused} on the server's clock. Read only.
local now = clock()
local due_now = redis.call('ZCOUNT', K_DUE, '-inf', now)
local expired = redis.call('ZCOUNT', K_LEASED, '-inf', now)
return {
  due_now + expired,
  redis.call('ZCOUNT', K_DUE, bound(now, true), '+inf'),
  redis.call('ZCOUNT', K_LEASED, bound(now, true), '+inf'),
  redis.call('ZCARD', K_DEAD),
  redis.call('HGET', K_Q, 'paused') == '1' and 1 or 0,
}
