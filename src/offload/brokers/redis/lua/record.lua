#!lua
-- record(task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max,
-- nslots, (minute, runs) * nslots, extra_name, extra_value, ...): add one task function's
-- measurements. KEYS[1] is the metrics hash; its fields are "<task>\31<measure>". Sums
-- add; maxima keep the largest, as do extra numbers whose name ends in "_max".
-- KEYS[2] is the prefix of the runs-per-minute hashes, "<prefix><unix minute>" with
-- fields task -> runs, in the same cluster slot (the same hash tag): given no slots, the
-- count goes to the current minute by the server's clock. Each hash expires 120 minutes
-- after its minute ends (TaskMetrics.RETAIN_MINUTES); a slot older than that, or more than
-- one minute ahead, is not written at all.
local key, task = KEYS[1], ARGV[1] .. '\31'
local function add(f, v)
  if tonumber(v) ~= 0 then
    redis.call('HINCRBYFLOAT', key, task .. f, v)
  end
end
local function max(f, v)
  local old = tonumber(redis.call('HGET', key, task .. f))
  if old == nil or tonumber(v) > old then
    redis.call('HSET', key, task .. f, v)
  end
end
local function runs(minute, n, now)
  if n > 0 and minute >= now - 120 and minute <= now + 1 then
    local slot = KEYS[2] .. minute
    redis.call('HINCRBY', slot, ARGV[1], n)
    redis.call('EXPIREAT', slot, (minute + 121) * 60)
  end
end
redis.call('HINCRBYFLOAT', key, task .. 'count', ARGV[2]) -- always: lists the task
add('failures', ARGV[3])
add('wall_total', ARGV[4])
max('wall_max', ARGV[5])
add('cpu_total', ARGV[6])
max('cpu_max', ARGV[7])
max('mem_peak_max', ARGV[8])
local now = math.floor(tonumber(redis.call('TIME')[1]) / 60)
local nslots = tonumber(ARGV[9])
if nslots == 0 then
  runs(now, tonumber(ARGV[2]), now)
end
for i = 10, 9 + 2 * nslots, 2 do
  runs(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), now)
end
for i = 10 + 2 * nslots, #ARGV, 2 do
  local name = ARGV[i]
  if string.sub(name, -4) == '_max' then
    max('x.' .. name, ARGV[i + 1])
  else
    add('x.' .. name, ARGV[i + 1])
  end
end
return 1
