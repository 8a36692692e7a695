#!lua flags=no-writes
-- stats(): {ready, scheduled, leased, dead, paused, then the stored policy: rate, cap, mc,
-- lease, dedup (each false when unset; lease false: never declared)} on the server's
-- clock. Read only.
local now = clock()
local due_now = redis.call('ZCOUNT', K_DUE, '-inf', now)
local expired = redis.call('ZCOUNT', K_LEASED, '-inf', now)
local q = redis.call('HMGET', K_Q, 'paused', 'rate', 'cap', 'mc', 'lease', 'dedup')
return {
  due_now + expired,
  redis.call('ZCOUNT', K_DUE, bound(now, true), '+inf'),
  redis.call('ZCOUNT', K_LEASED, bound(now, true), '+inf'),
  redis.call('ZCARD', K_DEAD),
  q[1] == '1' and 1 or 0,
  q[2], q[3], q[4], q[5], q[6],
}
