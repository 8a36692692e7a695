-- delete: remove one task, in any state, by id or by name; a named task's name stays
-- reserved for the dedup window. Returns the number deleted (0 or 1).
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
gone AS (
    DELETE FROM {schema}.tasks
    WHERE queue = %(queue)s::text
      AND (id = %(id)s::text OR name = %(name)s::text)
    RETURNING name
),
names AS (
    UPDATE {schema}.names n
    SET expires_at = now_.t + coalesce(
        (SELECT q.dedup_window FROM {schema}.queues q WHERE q.name = %(queue)s::text), 3600)
    FROM gone g CROSS JOIN now_
    WHERE n.queue = %(queue)s::text AND n.name = g.name
),
woken AS (
    SELECT pg_notify({channel}, q.name)
    FROM {schema}.queues q
    WHERE q.name = %(queue)s::text AND q.max_concurrent IS NOT NULL
      AND EXISTS (SELECT FROM gone)
)
SELECT count(*) FROM gone WHERE (SELECT count(*) FROM woken) >= 0
