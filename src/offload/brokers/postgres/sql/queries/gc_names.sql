-- gc_names: forget name reservations whose dedup window has passed (run now and then by
-- idle workers; an expired reservation is also reused in place by enqueue).
DELETE FROM {schema}.names
WHERE expires_at IS NOT NULL AND expires_at < extract(epoch FROM clock_timestamp())
