-- metrics: every task function's stored aggregates, and the current Unix minute by the
-- server's clock (the run counts per minute in extra are read against it).
SELECT task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max, extra,
       floor(extract(epoch FROM now()) / 60)::bigint AS minute
FROM {schema}.metrics
ORDER BY task
