-- release: give leased tasks back without counting the attempt (drain, shutdown, a task
-- this worker must not run), claimable again %(delay)s seconds from now; stale tokens
-- match nothing. Waiters are notified (they read the new due time from the table).
WITH done AS (
    UPDATE {schema}.tasks t
    SET state = 'ready',
        visible_at = extract(epoch FROM clock_timestamp()) + %(delay)s::float8,
        attempts = greatest(t.attempts - 1, 0),
        first_attempt_at = CASE WHEN t.attempts <= 1 THEN NULL ELSE t.first_attempt_at END,
        token = NULL
    FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
    WHERE t.id = l.id AND t.token = l.token AND t.state = 'leased'
    RETURNING t.queue
)
SELECT pg_notify({channel}, q.queue) FROM (SELECT DISTINCT queue FROM done) q
