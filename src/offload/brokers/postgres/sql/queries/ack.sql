-- ack: delete finished tasks. A finished run wins: the task goes whatever its state and
-- token (leased by this lease; leased again by another worker after this lease expired;
-- ready again after the expiry; dead-lettered meanwhile as "worker died"); unknown ids
-- match nothing. A named task's name stays reserved for its queue's dedup_window. A queue
-- with max_concurrent is notified: a slot came free for an idle worker (the leased count
-- is read from the rows, so a task leased by someone else no longer counts once deleted).
--
-- It commits without waiting for the WAL flush (set LOCAL here, so the ack is one
-- statement): a lost ack only runs a finished task again, at-least-once. The ids go in
-- binary: a text array costs the client a quoting check per id (2 us each, measured).
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t,
           set_config('synchronous_commit', 'off', true) AS commit_mode
),
gone AS (
    DELETE FROM {schema}.tasks t
    WHERE t.id = ANY(%(ids)b::text[]) AND (SELECT commit_mode FROM now_) = 'off'
    RETURNING t.queue, t.name
),
names AS (
    UPDATE {schema}.names n
    SET expires_at = now_.t + coalesce(q.dedup_window, 3600)
    FROM gone g
    CROSS JOIN now_
    LEFT JOIN {schema}.queues q ON q.name = g.queue
    WHERE g.name IS NOT NULL AND n.queue = g.queue AND n.name = g.name
),
woken AS (
    SELECT pg_notify({channel}, q.name)
    FROM {schema}.queues q
    WHERE q.max_concurrent IS NOT NULL AND q.name IN (SELECT queue FROM gone)
)
SELECT count(*) FROM gone WHERE (SELECT count(*) FROM woken) >= 0
