#!lua flags=allow-oom
-- retry(id, token, delay, error): ready again after `delay` seconds; this attempt counts.
-- Returns 1, or 0 when the lease was lost.
local id = ARGV[1]
local r = load(id)
if not (r and r.s == 'l' and r.k == ARGV[2]) then
  return 0
end
local now = clock()
r.s, r.k, r.err = 'r', '', ARGV[4]
save(id, r)
redis.call('ZREM', K_LEASED, id)
redis.call('ZADD', K_DUE, now + math.floor(math.max(0, tonumber(ARGV[3]) or 0) * US + 0.5), id)
wake()
return 1
