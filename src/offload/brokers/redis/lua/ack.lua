-- ack(id, token, ...): remove finished tasks whose lease is still held; stale tokens are
-- ignored. Named tasks keep their name for the dedup window. Returns how many were removed.
local held = held_leases()
if #held == 0 then
  return 0
end
local now = clock()
local ids, window = {}, nil
for i, h in ipairs(held) do
  ids[i] = h[1]
  if h[2].n ~= '' then
    window = window or dedup_window()
    retire_name(h[1], h[2].n, now, window)
  end
end
call_many('HDEL', K_TASKS, ids)
call_many('ZREM', K_LEASED, ids)
if window then
  redis.call('ZREMRANGEBYSCORE', K_NEXP, '-inf', now)
end
-- A queue saturated by max_concurrent may take a waiting task now.
if redis.call('HEXISTS', K_Q, 'mc') == 1 and any_due(now) then
  wake()
end
return #held
