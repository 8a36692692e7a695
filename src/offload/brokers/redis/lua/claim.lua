#!lua flags=allow-oom
-- claim(limit, wid, park_wid, ttl): lease up to `limit` claimable tasks of this queue
-- (claim_batch in _lib.lua). Given the id of a worker that parked on this queue (`wid`), it
-- first unparks it and returns what enqueue handed to its inbox in the meantime. Returns
-- {now, lease_until, then per task: id, name|false, payload, attempts, first_attempt_at,
-- enqueued_at, token}. Given `park_wid`, a claim that finds nothing parks that worker for
-- `ttl` microseconds, as peek.lua would (the worker is about to wait: one round trip
-- instead of two), and appends peek's answer: {now, lease_until, delay}.
local now, t = clock()
local limit = math.min(tonumber(ARGV[1]), 2000)
local kept = {}
if ARGV[2] and ARGV[2] ~= '' then
  kept = unpark(ARGV[2], now, limit)
end
local out = claim_batch(now, t, limit - #kept, kept)
if #out == 2 and ARGV[3] and ARGV[3] ~= '' then
  out[3] = park(ARGV[3], ARGV[4], now, next_claimable(now))
end
return out
