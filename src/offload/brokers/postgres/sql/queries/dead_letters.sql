-- dead_letters: a queue's dead tasks, oldest failure first.
SELECT id, queue, name, payload, attempts, coalesce(error, ''), coalesce(traceback, ''),
       failed_at
FROM {schema}.tasks
WHERE queue = %(queue)s::text AND state = 'dead'
ORDER BY failed_at, seq
LIMIT %(limit)s::int
