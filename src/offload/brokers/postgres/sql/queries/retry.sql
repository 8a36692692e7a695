-- retry: make a leased task ready again after %(delay)s seconds, recording the error. This
-- attempt counts. No row when the lease (id, token) was lost.
WITH done AS (
    UPDATE {schema}.tasks
    SET state = 'ready',
        visible_at = extract(epoch FROM clock_timestamp()) + %(delay)s::float8,
        error = %(error)s::text,
        token = NULL
    WHERE id = %(id)s::text AND token = %(token)s::text AND state = 'leased'
    RETURNING queue
)
SELECT pg_notify({channel}, queue) FROM done
