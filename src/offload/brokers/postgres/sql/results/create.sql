-- create: the result store's table, made on first use of results (brokers that never store
-- a result do not carry it). Concurrent first users take turns on the advisory lock.
SELECT pg_advisory_xact_lock(hashtext({channel} || ':results'));
CREATE TABLE IF NOT EXISTS {schema}.results (
    key        text             NOT NULL,
    value      bytea            NOT NULL,
    expires_at double precision NOT NULL,  -- epoch seconds, the server's clock
    CONSTRAINT results_pkey PRIMARY KEY (key)
);
CREATE INDEX IF NOT EXISTS results_expires ON {schema}.results (expires_at);
