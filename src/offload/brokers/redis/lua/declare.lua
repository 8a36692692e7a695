#!lua
-- declare(rate, cap, mc, lease, dedup): store the queue's policy; '' clears a limit. The
-- token bucket state (tok, ts) and pause flag are kept.
local fields = { 'rate', 'cap', 'mc', 'lease', 'dedup' }
for i, f in ipairs(fields) do
  if ARGV[i] == '' then
    redis.call('HDEL', K_Q, f)
  else
    redis.call('HSET', K_Q, f, ARGV[i])
  end
end
-- A looser policy may let waiting workers claim now.
if any_due(clock()) then
  wake()
end
return 1
