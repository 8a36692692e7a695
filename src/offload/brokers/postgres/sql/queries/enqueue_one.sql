-- enqueue_one: enqueue.sql for a single named task with plain parameters (one-by-one
-- sends; no arrays to build or unnest; unnamed ones take enqueue_plain.sql). Returns one
-- row when created or when a task with this id exists already (left as it is, its name
-- not taken again, nobody woken), none for a duplicate name. Same NOTIFY at commit.
WITH known AS (
    SELECT EXISTS (SELECT FROM {schema}.tasks WHERE id = %(id)s::text) AS e
),
reserved AS (
    INSERT INTO {schema}.names AS n (queue, name, expires_at)
    SELECT %(queue)s::text, %(name)s::text, NULL
    FROM known WHERE %(name)s::text IS NOT NULL AND NOT known.e
    ON CONFLICT (queue, name) DO UPDATE SET expires_at = NULL
        WHERE n.expires_at <= extract(epoch FROM clock_timestamp())
    RETURNING 1
),
ins AS (
    INSERT INTO {schema}.tasks (id, queue, name, payload, state, visible_at, enqueued_at)
    SELECT %(id)s::text, %(queue)s::text, %(name)s::text, %(payload)s::bytea, 'ready',
           coalesce(%(eta)s::float8, now_.t + %(delay)s::float8), now_.t
    FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) now_, known
    WHERE NOT known.e AND (%(name)s::text IS NULL OR EXISTS (SELECT FROM reserved))
    ON CONFLICT (id) DO NOTHING
    RETURNING queue
)
SELECT pg_notify({channel}, queue) FROM ins
UNION ALL
SELECT NULL FROM known WHERE known.e
