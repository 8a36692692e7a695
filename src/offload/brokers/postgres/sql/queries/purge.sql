-- purge: delete a queue's ready and scheduled tasks (leased ones finish, dead ones stay);
-- their names stay reserved for the dedup window. Returns how many.
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
gone AS (
    DELETE FROM {schema}.tasks
    WHERE queue = %(queue)s::text AND state = 'ready'
    RETURNING name
),
names AS (
    UPDATE {schema}.names n
    SET expires_at = now_.t + coalesce(
        (SELECT q.dedup_window FROM {schema}.queues q WHERE q.name = %(queue)s::text), 3600)
    FROM gone g CROSS JOIN now_
    WHERE n.queue = %(queue)s::text AND n.name = g.name
)
SELECT count(*) FROM gone
