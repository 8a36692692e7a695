-- set_paused: pause or resume a queue (an undeclared one gets a row with the default policy,
-- marked declared = false so that stats() reports no policy for it). Resuming wakes the
-- queue's idle workers.
WITH up AS (
    INSERT INTO {schema}.queues AS q (name, paused, declared)
    VALUES (%(queue)s::text, %(paused)s::bool, false)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
    RETURNING q.name, q.paused
)
SELECT CASE WHEN NOT up.paused THEN pg_notify({channel}, up.name)::text END FROM up
