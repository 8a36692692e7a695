-- put: store a result for %(ttl)s seconds and, when %(channel)s is given, NOTIFY the
-- caller's channel with its key (sent at commit: the row is visible when it arrives).
WITH put AS (
    INSERT INTO {schema}.results (key, value, expires_at)
    VALUES (%(key)s, %(value)s, extract(epoch FROM clock_timestamp()) + %(ttl)s)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
    RETURNING key
)
SELECT pg_notify(%(channel)s::text, key) FROM put WHERE %(channel)s::text IS NOT NULL
