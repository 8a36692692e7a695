#!lua flags=allow-oom
-- pause(flag): '1' pauses the queue, '0' resumes it (and wakes idle workers).
redis.call('HSET', K_Q, 'paused', ARGV[1])
if ARGV[1] == '0' and any_due(clock()) then
  wake()
end
return 1
