-- dead_letter: move a leased task to its queue's dead letters; it keeps its name. No row
-- when the lease was lost. A max_concurrent queue is notified (a slot came free).
WITH done AS (
    UPDATE {schema}.tasks
    SET state = 'dead',
        error = %(error)s::text,
        traceback = %(traceback)s::text,
        failed_at = extract(epoch FROM clock_timestamp()),
        token = NULL
    WHERE id = %(id)s::text AND token = %(token)s::text AND state = 'leased'
    RETURNING queue
)
SELECT d.queue,
       (SELECT pg_notify({channel}, q.name)
        FROM {schema}.queues q WHERE q.name = d.queue AND q.max_concurrent IS NOT NULL)
FROM done d
