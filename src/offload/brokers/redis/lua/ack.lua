#!lua flags=allow-oom
-- ack(id, token, ...): a finished run wins: remove each task whatever its state and token
-- (leased by this token, re-leased to another worker after this lease expired, ready again,
-- or dead-lettered meanwhile). Named tasks keep their name for the dedup window; unknown
-- ids and unreadable records are left alone. Returns how many were removed.
local ids, seen = {}, {}
for i = 1, #ARGV, 2 do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    ids[#ids + 1] = ARGV[i]
  end
end
local recs = load_many(ids)
local gone, elsewhere, now, window = {}, {}, nil, nil
for _, id in ipairs(ids) do
  local r = recs[id]
  if r then
    gone[#gone + 1] = id
    if r.s ~= 'l' then
      elsewhere[#elsewhere + 1] = id -- a late ack: ready or dead again meanwhile
    end
    if r.n ~= '' then
      now = now or clock()
      window = window or dedup_window()
      retire_name(id, r.n, now, window)
    end
  end
end
if #gone == 0 then
  return 0
end
call_many('HDEL', K_TASKS, gone)
call_many('ZREM', K_LEASED, gone)
call_many('ZREM', K_DUE, elsewhere)
call_many('ZREM', K_DEAD, elsewhere)
if window then
  redis.call('ZREMRANGEBYSCORE', K_NEXP, '-inf', now)
end
-- A queue saturated by max_concurrent may take a waiting task now.
if redis.call('HEXISTS', K_Q, 'mc') == 1 and any_due(now or clock()) then
  wake()
end
return #gone
