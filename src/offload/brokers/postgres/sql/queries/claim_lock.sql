-- claim, step 1 (same transaction as claim.sql): lock the rows of the requested queues that
-- have a rate or max_concurrent, in name order (no deadlock between claimers). Claimers of
-- such a queue take turns; claim.sql then starts with a fresh READ COMMITTED snapshot, so
-- its count of leased tasks includes every claim committed before the lock was granted.
-- Unlimited queues are not locked: their claimers run in parallel on SKIP LOCKED alone.
--
-- It also commits this transaction asynchronously (no WAL flush wait): a claim lost in a
-- server crash only makes its tasks claimable again, exactly like a worker that died.
SELECT set_config('synchronous_commit', 'off', true),
       (SELECT count(*) FROM (
            SELECT name
            FROM {schema}.queues
            WHERE name = ANY(%(queues)s::text[])
              AND (rate IS NOT NULL OR max_concurrent IS NOT NULL)
              AND NOT paused
            ORDER BY name
            FOR UPDATE) locked)
