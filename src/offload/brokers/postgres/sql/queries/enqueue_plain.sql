-- enqueue_plain: one task without a name, the most common send. A plain INSERT: no names
-- table to consult, so none of enqueue_one.sql's CTE. pg_notify in RETURNING queues the
-- NOTIFY in this statement's transaction, so, as with enqueue.sql, workers are woken at
-- commit and never on rollback. Idempotent by id: a task with this id (in any state) is
-- left as it is, with no row returned and no wake-up; the caller reports True either way.
-- Positional parameters: id, queue, payload, eta (NULL for none), delay.
INSERT INTO {schema}.tasks (id, queue, payload, visible_at, enqueued_at)
SELECT %s::text, %s::text, %s::bytea, coalesce(%s::float8, now_.t + %s::float8), now_.t
FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) now_
ON CONFLICT (id) DO NOTHING
RETURNING pg_notify({channel}, queue)
