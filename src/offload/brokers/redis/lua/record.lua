#!lua
-- record(task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max,
-- extra_name, extra_value, ...): add one task function's measurements. KEYS[1] is the
-- metrics hash; its fields are "<task>\31<measure>". Sums add; maxima keep the largest.
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
redis.call('HINCRBYFLOAT', key, task .. 'count', ARGV[2]) -- always: lists the task
add('failures', ARGV[3])
add('wall_total', ARGV[4])
max('wall_max', ARGV[5])
add('cpu_total', ARGV[6])
max('cpu_max', ARGV[7])
max('mem_peak_max', ARGV[8])
for i = 9, #ARGV, 2 do
  add('x.' .. ARGV[i], ARGV[i + 1])
end
return 1
