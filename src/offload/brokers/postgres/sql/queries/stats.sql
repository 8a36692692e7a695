-- stats: counts of one queue by what a worker would see now, whether it is paused, and the
-- policy the broker enforces for it (all NULL when the queue was never declared: a queue
-- row made by pausing alone has declared = false), and since when the oldest claimable
-- task has been claimable (NULL: none).
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
counts AS (
    SELECT count(*) FILTER (WHERE t.state IN ('ready', 'leased') AND t.visible_at <= now_.t)
               AS ready,
           count(*) FILTER (WHERE t.state = 'ready' AND t.visible_at > now_.t) AS scheduled,
           count(*) FILTER (WHERE t.state = 'leased' AND t.visible_at > now_.t) AS leased,
           count(*) FILTER (WHERE t.state = 'dead') AS dead,
           min(t.visible_at) FILTER (WHERE t.state IN ('ready', 'leased')
                                     AND t.visible_at <= now_.t) AS oldest_ready_at
    FROM now_
    LEFT JOIN {schema}.tasks t ON t.queue = %(queue)s::text
)
SELECT c.ready, c.scheduled, c.leased, c.dead, coalesce(q.paused, false),
       coalesce(q.declared, false), q.rate, q.bucket, q.max_concurrent, q.lease, q.dedup_window,
       c.oldest_ready_at
FROM counts c
LEFT JOIN {schema}.queues q ON q.name = %(queue)s::text
