-- The SQLite broker's retry overrides (offload.brokers.overrides; schema version 4).

-- name: set_retry
-- A queue never declared gets a row that says so (declared_at NULL), as set_paused makes.
INSERT INTO queues (name, lease, dedup_window, retry)
VALUES (:name, :lease, :dedup_window, :retry)
ON CONFLICT (name) DO UPDATE SET retry = excluded.retry;

-- name: retry_overrides
SELECT name, retry FROM queues
WHERE name IN (SELECT value FROM json_each(?)) AND retry IS NOT NULL;
