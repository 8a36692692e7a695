-- get_task: one task of a queue in any state, with the server's clock.
SELECT id, name, payload, state, visible_at, attempts, first_attempt_at, enqueued_at,
       coalesce(error, ''), coalesce(traceback, ''), failed_at,
       extract(epoch FROM clock_timestamp())::float8
FROM {schema}.tasks
WHERE id = %(id)s::text AND queue = %(queue)s::text
