-- set_retry: store (NULL: clear) a queue's retry override. A queue never declared gets a
-- row with the default policy marked declared = false, as set_paused makes.
INSERT INTO {schema}.queues AS q (name, retry, declared)
VALUES (%(queue)s::text, %(retry)s::jsonb, false)
ON CONFLICT (name) DO UPDATE SET retry = excluded.retry
