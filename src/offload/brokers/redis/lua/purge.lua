#!lua flags=allow-oom
-- purge(batch): delete up to `batch` ready or scheduled tasks (leased ones finish, dead
-- ones stay); names stay reserved for the dedup window. Returns how many were deleted.
-- An id index an earlier version kept goes too (it is never read; see legacy_ids_key).
redis.call('UNLINK', legacy_ids_key())
local ids = redis.call('ZRANGE', K_DUE, 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then
  return 0
end
local now = clock()
local window = dedup_window()
local recs = load_many(ids)
for _, id in ipairs(ids) do
  local r = recs[id]
  if r then
    retire_name(id, r.n, now, window)
  end
end
call_many('HDEL', K_TASKS, ids)
call_many('ZREM', K_DUE, ids)
return #ids
