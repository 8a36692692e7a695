-- metrics: every task function's stored aggregates.
SELECT task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max, extra
FROM {schema}.metrics
ORDER BY task
