-- The SQLite broker's result store (offload.brokers.base.ResultStore), loaded by results.py.
-- The table is made by schema version 3 (migrate_3.sql). `reply_to` is the caller's channel
-- until the result is delivered to it (then NULL); rows past `expires_at` are invisible and
-- swept lazily by put_result.

-- name: put
INSERT INTO results (key, value, expires_at, reply_to)
VALUES (:key, :value, :expires_at, :reply_to)
ON CONFLICT (key) DO UPDATE SET
    value = excluded.value,
    expires_at = excluded.expires_at,
    reply_to = excluded.reply_to;

-- name: get
SELECT value FROM results WHERE key = :key AND expires_at > :now;

-- name: delivered
SELECT key, value FROM results
WHERE reply_to = :reply_to AND expires_at > :now
ORDER BY rowid
LIMIT 1000;

-- name: mark_delivered
UPDATE results SET reply_to = NULL
WHERE key IN (SELECT value FROM json_each(:keys));

-- name: sweep
DELETE FROM results WHERE expires_at <= :now;
