-- enqueue_plain: one task without a name, the most common send. A plain INSERT: no names
-- table to consult, so none of enqueue_one.sql's CTE. Returns one row. pg_notify in
-- RETURNING queues the NOTIFY in this statement's transaction, so, as with enqueue.sql,
-- workers are woken at commit and never on rollback. Positional parameters: id, queue,
-- payload, eta (NULL for none), delay.
INSERT INTO {schema}.tasks (id, queue, payload, visible_at, enqueued_at)
SELECT %s::text, %s::text, %s::bytea, coalesce(%s::float8, now_.t + %s::float8), now_.t
FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) now_
RETURNING pg_notify({channel}, queue)
