#!lua flags=allow-oom
-- delete(id, name): delete one task in any state, found by id (or by name when id is '');
-- its name stays reserved for the dedup window. Returns 1, or 0 when there is no such task.
local id = ARGV[1]
if id == '' then
  id = redis.call('HGET', K_NAMES, ARGV[2])
  if not id then
    return 0
  end
end
local r = load(id)
if r == nil then
  return 0
end
local now = clock()
redis.call('HDEL', K_TASKS, id)
redis.call('ZREM', K_DUE, id)
redis.call('ZREM', K_LEASED, id)
redis.call('ZREM', K_DEAD, id)
if r then
  retire_name(id, r.n, now, dedup_window())
end
return 1
