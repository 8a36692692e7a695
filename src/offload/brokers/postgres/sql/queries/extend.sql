-- extend: renew held leases by each queue's lease duration as stored now (the last declare;
-- 60 s for an undeclared queue). Returns (id, token, lease seconds applied) per lease still
-- held; one task may appear twice in a batch, under its old and its new token.
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
)
UPDATE {schema}.tasks t
SET visible_at = now_.t + l.lease
FROM (SELECT l.id, l.token, l.queue, coalesce(q.lease, 60) AS lease
      FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(queues)s::text[]) AS l(id, token, queue)
      LEFT JOIN {schema}.queues q ON q.name = l.queue) l
CROSS JOIN now_
WHERE t.id = l.id AND t.token = l.token AND t.queue = l.queue AND t.state = 'leased'
RETURNING t.id, t.token, l.lease
