-- get: one result, unless it expired
SELECT value FROM {schema}.results
WHERE key = %(key)s AND expires_at > extract(epoch FROM clock_timestamp())
