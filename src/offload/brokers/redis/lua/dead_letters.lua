#!lua flags=no-writes
-- dead_letters(limit): oldest first by failed_at; per task id, name|false, payload,
-- attempts, error, traceback, failed_at. Read only.
local ids = redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local id = ids[i]
  local r, why, raw = load(id)
  if r == false then
    r = { n = '', p = raw, a = 0, err = 'corrupt task record (' .. why .. ')', tb = '',
          fa = tonumber(ids[i + 1]) }
  end
  if r then
    local n = #out
    out[n + 1] = id
    out[n + 2] = r.n ~= '' and r.n or false
    out[n + 3] = r.p
    out[n + 4] = r.a
    out[n + 5] = r.err
    out[n + 6] = r.tb
    out[n + 7] = r.fa
  end
end
return out
