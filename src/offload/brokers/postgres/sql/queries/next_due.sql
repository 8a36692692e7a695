-- wait(): seconds until a task of the requested queues may become claimable (<= 0: now),
-- NULL when nothing is due until a notification. Per queue that is not paused: the first
-- entry of the claim index (an eta or a lease expiry); if that is already due, the moment the
-- queue's limits let a claim through: the next whole token, and when max_concurrent is
-- saturated the earliest lease expiry (an ack also wakes waiters, by NOTIFY).
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
qs AS (
    SELECT r.name, q.rate, q.max_concurrent,
           CASE WHEN q.rate IS NOT NULL THEN
               least(q.bucket, coalesce(q.tokens, q.bucket)
                               + greatest(0, now_.t - coalesce(q.tokens_at, now_.t)) * q.rate)
           END AS tokens,
           (SELECT t.visible_at FROM {schema}.tasks t
            WHERE t.queue = r.name AND t.state IN ('ready', 'leased')
            ORDER BY t.visible_at, t.seq LIMIT 1) AS first_due
    FROM unnest(%(queues)s::text[]) AS r(name)
    CROSS JOIN now_
    LEFT JOIN {schema}.queues q ON q.name = r.name
    WHERE NOT coalesce(q.paused, false)
)
SELECT min(greatest(
           qs.first_due,
           CASE WHEN qs.tokens < 1 THEN now_.t + (1 - qs.tokens) / qs.rate END,
           CASE WHEN qs.max_concurrent IS NOT NULL AND qs.first_due <= now_.t
                     AND (SELECT count(*) FROM {schema}.tasks t
                          WHERE t.queue = qs.name AND t.state = 'leased'
                            AND t.visible_at > now_.t) >= qs.max_concurrent
                THEN (SELECT min(t.visible_at) FROM {schema}.tasks t
                      WHERE t.queue = qs.name AND t.state = 'leased' AND t.visible_at > now_.t)
           END) - now_.t)
FROM qs CROSS JOIN now_
WHERE qs.first_due IS NOT NULL
