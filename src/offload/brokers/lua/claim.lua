-- claim(limit, wid): lease up to `limit` claimable tasks of this queue (claim_batch in
-- _lib.lua). Given the id of a worker that parked on this queue, it first unparks it and
-- returns what enqueue handed to its inbox in the meantime. Returns {now, lease_until, then
-- per task: id, name|false, payload, attempts, first_attempt_at, enqueued_at, token}.
local now, t = clock()
local limit = math.min(tonumber(ARGV[1]), 2000)
local kept = {}
if ARGV[2] and ARGV[2] ~= '' then
  kept = unpark(ARGV[2], now, limit)
end
return claim_batch(now, t, limit - #kept, kept)
