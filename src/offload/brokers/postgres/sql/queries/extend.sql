-- extend: renew held leases by each queue's lease duration; returns the (id, token) pairs
-- still held (one task may appear twice in a batch, under its old and its new token).
UPDATE {schema}.tasks t
SET visible_at = extract(epoch FROM clock_timestamp())
                 + coalesce((SELECT q.lease FROM {schema}.queues q WHERE q.name = t.queue), 60)
FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
WHERE t.id = l.id AND t.token = l.token AND t.state = 'leased'
RETURNING t.id, t.token
