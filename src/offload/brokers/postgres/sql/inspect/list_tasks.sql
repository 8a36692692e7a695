-- list_tasks: a page of a queue's tasks (every state) in id order, through the primary key
-- (ids sort by creation time), with the server's clock.
SELECT id, name, payload, state, visible_at, attempts, first_attempt_at, enqueued_at,
       coalesce(error, ''), coalesce(traceback, ''), failed_at,
       extract(epoch FROM clock_timestamp())::float8
FROM {schema}.tasks
WHERE id > %(after)s::text AND queue = %(queue)s::text
ORDER BY id
LIMIT %(limit)s::int
