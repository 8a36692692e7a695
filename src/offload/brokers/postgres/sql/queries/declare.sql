-- declare: create or update queues (the last writer wins), in name order so that it cannot
-- deadlock with the claim function's lock (migration 005). The token bucket's state is kept; a changed policy applies
-- at the next claim. Idle workers are woken to look again. A row made by pausing an
-- undeclared queue becomes declared.
WITH up AS (
    INSERT INTO {schema}.queues AS q (name, rate, bucket, max_concurrent, lease, dedup_window)
    SELECT * FROM unnest(%(names)s::text[], %(rates)s::float8[], %(buckets)s::float8[],
                         %(max_concurrents)s::int[], %(leases)s::float8[],
                         %(dedup_windows)s::float8[])
    ORDER BY 1
    ON CONFLICT (name) DO UPDATE
    SET rate = excluded.rate, bucket = excluded.bucket,
        max_concurrent = excluded.max_concurrent, lease = excluded.lease,
        dedup_window = excluded.dedup_window, declared = true
    RETURNING q.name
)
SELECT pg_notify({channel}, name) FROM up
