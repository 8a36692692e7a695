-- record: add per-task-function measurements to the stored aggregates: sums add up, maxima
-- keep the largest; extra numbers add up by key, except "*_max" keys, which keep the
-- largest (as the SQLite broker). One row per task in %(tasks)s.
-- Runs per minute live in extra as "m.<unix minute>" keys: %(recents)s gives a task's
-- slots ({"<minute>": runs}) and %(now_runs)s its runs in the server's current minute.
-- Slots more than 120 minutes old (TaskMetrics.RETAIN_MINUTES) or more than one ahead are
-- dropped here, so a row holds at most about two hours of them.
WITH c AS (SELECT floor(extract(epoch FROM now()) / 60)::bigint AS minute),
new AS (
    SELECT t.task, t.count, t.failures, t.wall_total, t.wall_max, t.cpu_total, t.cpu_max,
           t.mem_peak_max,
           t.extra || coalesce(
               (SELECT jsonb_object_agg('m.' || s.k, s.v)
                FROM (SELECT r.key AS k, sum(r.value::text::bigint) AS v
                      FROM (SELECT key, value FROM jsonb_each(t.recent)
                            UNION ALL
                            SELECT c.minute::text, to_jsonb(t.now_runs)
                            WHERE t.now_runs > 0) r
                      WHERE r.key::bigint BETWEEN c.minute - 120 AND c.minute + 1
                      GROUP BY r.key) s),
               '{}'::jsonb) AS extra
    FROM c, unnest(%(tasks)s::text[], %(counts)s::bigint[], %(failures)s::bigint[],
                   %(wall_totals)s::float8[], %(wall_maxes)s::float8[],
                   %(cpu_totals)s::float8[], %(cpu_maxes)s::float8[],
                   %(mem_peak_maxes)s::bigint[], %(extras)s::jsonb[], %(recents)s::jsonb[],
                   %(now_runs)s::bigint[])
         AS t(task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max,
              extra, recent, now_runs)
)
INSERT INTO {schema}.metrics AS m
    (task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max, extra)
SELECT * FROM new
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
                   WHERE CASE WHEN k ~ '^m\.-?[0-9]{1,15}$'
                              THEN substr(k, 3)::bigint
                                   >= floor(extract(epoch FROM now()) / 60) - 120
                              ELSE true END
                   GROUP BY k) s)
