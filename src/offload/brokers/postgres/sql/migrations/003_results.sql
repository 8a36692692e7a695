-- offload PostgreSQL broker, migration 3: the result store's table.
--
-- Before migration 3 the results code created this table on first use (under the advisory
-- lock taken below), so a schema at migration 2 may hold it already, with exactly this
-- definition and live results: IF NOT EXISTS keeps those rows. The lock makes a process of
-- the older code, still creating the table on first use, wait for this transaction.
SELECT pg_advisory_xact_lock(hashtext({channel} || ':results'));

-- One stored task outcome (offload.brokers.base.ResultStore), keyed by the task id.
-- expires_at is epoch seconds on the server's clock; an expired row is invisible to get
-- and take and deleted by put's periodic sweep.
CREATE TABLE IF NOT EXISTS {schema}.results (
    key        text             NOT NULL,
    value      bytea            NOT NULL,
    expires_at double precision NOT NULL,
    CONSTRAINT results_pkey PRIMARY KEY (key)
);

-- Finds expired results for the sweep.
CREATE INDEX IF NOT EXISTS results_expires ON {schema}.results (expires_at);
