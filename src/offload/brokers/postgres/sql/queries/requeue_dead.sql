-- requeue_dead: make dead tasks (all when %(ids)s is NULL) ready now, with fresh attempt
-- counters and no error; returns how many.
WITH done AS (
    UPDATE {schema}.tasks
    SET state = 'ready',
        visible_at = extract(epoch FROM clock_timestamp()),
        attempts = 0,
        first_attempt_at = NULL,
        token = NULL,
        error = NULL,
        traceback = NULL,
        failed_at = NULL
    WHERE queue = %(queue)s::text AND state = 'dead'
      AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
    RETURNING 1
)
SELECT count(*), (SELECT pg_notify({channel}, %(queue)s::text) WHERE EXISTS (SELECT FROM done))
FROM done
