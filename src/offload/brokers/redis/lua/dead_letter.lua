#!lua flags=allow-oom
-- dead_letter(id, token, error, traceback): move a leased task to the dead letters; its
-- name stays reserved. Returns 1, or 0 when the lease was lost.
local id = ARGV[1]
local r = load(id)
if not (r and r.s == 'l' and r.k == ARGV[2]) then
  return 0
end
local now = clock()
r.s, r.k, r.err, r.tb, r.fa = 'd', '', ARGV[3], ARGV[4], now
save(id, r)
redis.call('ZREM', K_LEASED, id)
redis.call('ZADD', K_DEAD, now, id)
-- A queue saturated by max_concurrent has room again.
if redis.call('HEXISTS', K_Q, 'mc') == 1 and any_due(now) then
  wake()
end
return 1
