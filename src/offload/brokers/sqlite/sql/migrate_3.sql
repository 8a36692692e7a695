-- offload SQLite broker schema, version 2 -> 3 (PRAGMA user_version = 3): the result store.
--
-- Applied in the same BEGIN IMMEDIATE transaction as any earlier step; never edit once
-- released. Before version 3 the results code created this table on first use, so a
-- version 2 database may hold it already, with exactly this definition and live results:
-- IF NOT EXISTS keeps those rows.

-- One stored task outcome (offload.brokers.base.ResultStore), keyed by the task id.
-- `reply_to` is the caller's channel until the result is delivered to it (then NULL);
-- rows past `expires_at` are invisible and swept lazily by put_result.
CREATE TABLE IF NOT EXISTS results (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL NOT NULL,
    reply_to   TEXT
);

-- A caller's listener takes the undelivered results addressed to its channel.
CREATE INDEX IF NOT EXISTS results_reply ON results (reply_to) WHERE reply_to IS NOT NULL;
