#!lua flags=allow-oom
-- release(delay, id, token, ...): give leased tasks back, claimable again after `delay`
-- seconds, not counting the attempt; stale tokens are ignored. Returns how many were
-- released.
local held = held_leases(2)
if #held == 0 then
  return 0
end
local now = clock()
local at = now + math.floor(math.max(0, tonumber(ARGV[1]) or 0) * US + 0.5)
for _, h in ipairs(held) do
  release_record(h[1], h[2], at)
end
wake()
return #held
