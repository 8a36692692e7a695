-- release(id, token, ...): give leased tasks back at once, not counting the attempt.
-- Returns how many were released.
local held = held_leases()
if #held == 0 then
  return 0
end
local now = clock()
local ids, hset, zadd = {}, {}, {}
for i, h in ipairs(held) do
  local id, r = h[1], h[2]
  r.s, r.k, r.a = 'r', '', math.max(0, r.a - 1)
  if r.a == 0 then
    r.f = 0
  end
  ids[i] = id
  hset[#hset + 1] = id
  hset[#hset + 1] = pack(r)
  zadd[#zadd + 1] = now
  zadd[#zadd + 1] = id
end
call_many('HSET', K_TASKS, hset)
call_many('ZREM', K_LEASED, ids)
call_many('ZADD', K_DUE, zadd)
wake()
return #held
