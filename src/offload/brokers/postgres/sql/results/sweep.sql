-- sweep: delete up to a thousand expired results (run now and then by put)
DELETE FROM {schema}.results
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {schema}.results
    WHERE expires_at <= extract(epoch FROM clock_timestamp())
    LIMIT 1000
))
