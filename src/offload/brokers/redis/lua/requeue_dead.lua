#!lua
-- requeue_dead(id, ...): dead tasks become ready now with fresh attempt counters; no
-- arguments: every dead task. Returns how many.
local now = clock()
local ids = ARGV
if #ids == 0 then
  ids = redis.call('ZRANGE', K_DEAD, 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  local r = redis.call('ZSCORE', K_DEAD, id) and load(id)
  if r then
    r.s, r.a, r.f, r.k, r.err, r.tb, r.fa = 'r', 0, 0, '', '', '', 0
    save(id, r)
    redis.call('ZREM', K_DEAD, id)
    redis.call('ZADD', K_DUE, now, id)
    n = n + 1
  elseif r == nil then
    redis.call('ZREM', K_DEAD, id) -- an index entry without a record
  end -- unreadable records stay dead
end
if n > 0 then
  wake()
end
return n
