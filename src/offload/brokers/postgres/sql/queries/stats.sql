-- stats: counts of one queue by what a worker would see now.
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
)
SELECT count(*) FILTER (WHERE t.state IN ('ready', 'leased') AND t.visible_at <= now_.t),
       count(*) FILTER (WHERE t.state = 'ready' AND t.visible_at > now_.t),
       count(*) FILTER (WHERE t.state = 'leased' AND t.visible_at > now_.t),
       count(*) FILTER (WHERE t.state = 'dead'),
       coalesce((SELECT q.paused FROM {schema}.queues q WHERE q.name = %(queue)s::text), false)
FROM now_
LEFT JOIN {schema}.tasks t ON t.queue = %(queue)s::text
