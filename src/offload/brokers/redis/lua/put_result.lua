#!lua
-- put_result(value, ttl_ms, key): store a task's result and, with a reply list, deliver it.
-- KEYS[1]: the result ({P}:r:<key>); KEYS[2], when given: the caller's reply list.
-- One script (atomic, one round trip): SET with PX, then RPUSH of the (key, value) item
-- the caller's listener unpacks (a 4-byte big-endian key length, the key, the value); the
-- list lives as long as the longest result in it (GT), or this one (NX). No allow-oom
-- flag: under maxmemory Redis refuses the whole script before its first write.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[2] then
  redis.call('RPUSH', KEYS[2], struct.pack('>I4', #ARGV[3]) .. ARGV[3] .. ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2], 'GT')
  redis.call('PEXPIRE', KEYS[2], ARGV[2], 'NX')
end
return 1
