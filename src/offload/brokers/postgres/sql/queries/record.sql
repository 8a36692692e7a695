-- record: add per-task-function measurements to the stored aggregates: sums add up, maxima
-- keep the largest; extra numbers add up by key, except "*_max" keys, which keep the
-- largest (as the SQLite broker). One row per task in %(tasks)s.
INSERT INTO {schema}.metrics AS m
    (task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max, extra)
SELECT * FROM unnest(%(tasks)s::text[], %(counts)s::bigint[], %(failures)s::bigint[],
                     %(wall_totals)s::float8[], %(wall_maxes)s::float8[],
                     %(cpu_totals)s::float8[], %(cpu_maxes)s::float8[],
                     %(mem_peak_maxes)s::bigint[], %(extras)s::jsonb[])
ORDER BY 1
ON CONFLICT (task) DO UPDATE
SET count = m.count + excluded.count,
    failures = m.failures + excluded.failures,
    wall_total = m.wall_total + excluded.wall_total,
    wall_max = greatest(m.wall_max, excluded.wall_max),
    cpu_total = m.cpu_total + excluded.cpu_total,
    cpu_max = greatest(m.cpu_max, excluded.cpu_max),
    mem_peak_max = greatest(m.mem_peak_max, excluded.mem_peak_max),
    extra = (SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
             FROM (SELECT k, CASE WHEN right(k, 4) = '_max' THEN max(v::float8)
                                  ELSE sum(v::float8) END AS v
                   FROM (SELECT key AS k, value::text AS v FROM jsonb_each(m.extra)
                         UNION ALL
                         SELECT key, value::text FROM jsonb_each(excluded.extra)) e
                   GROUP BY k) s)
