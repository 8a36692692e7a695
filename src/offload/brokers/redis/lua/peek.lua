#!lua flags=allow-oom
-- peek(wid, ttl): microseconds until a task of this queue may become claimable: 0 now, -1
-- not foreseeable (next_claimable in _lib.lua). Given a worker id, unless the answer is 0,
-- the worker is also parked for `ttl` microseconds: enqueue may then hand it a task.
local now = clock()
return park(ARGV[1], ARGV[2], now, next_claimable(now))
