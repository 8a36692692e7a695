-- take: the results whose keys a caller's channel was notified of, unless they expired
SELECT key, value FROM {schema}.results
WHERE key = ANY(%(keys)s::text[]) AND expires_at > extract(epoch FROM clock_timestamp())
