-- Every statement the SQLite broker runs, by name (loaded once by sqlite_sql.py).
-- Strings stay constant so sqlite3's statement cache reuses the prepared statements;
-- batches travel as one JSON array parameter (json_each) for the same reason.
-- Task states: 0 ready, 1 leased, 2 dead. Times are epoch seconds from the host clock,
-- read by Python after BEGIN IMMEDIATE and passed in as :now.

-- name: queue_row
SELECT paused, rate, bucket, max_concurrent, lease, dedup_window, tokens, tokens_at,
    declared_at
FROM queues WHERE name = ?;

-- name: declare
INSERT INTO queues (name, rate, bucket, max_concurrent, lease, dedup_window, tokens, tokens_at,
                    declared_at)
VALUES (:name, :rate, :bucket, :max_concurrent, :lease, :dedup_window, :bucket, :now, :now)
ON CONFLICT (name) DO UPDATE SET
    rate = excluded.rate,
    bucket = excluded.bucket,
    max_concurrent = excluded.max_concurrent,
    lease = excluded.lease,
    dedup_window = excluded.dedup_window,
    declared_at = excluded.declared_at,
    -- the bucket keeps its tokens across re-declares; it starts full the first time a
    -- rate is given
    tokens = coalesce(queues.tokens, excluded.tokens),
    tokens_at = coalesce(queues.tokens_at, excluded.tokens_at);

-- name: set_paused
INSERT INTO queues (name, lease, dedup_window, paused)
VALUES (:name, :lease, :dedup_window, :paused)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused;

-- name: reserve_name
-- Takes the name unless a task holds it or its dedup window is still open, or a task with
-- this id exists already (a repeated send: left as it is); the statement changes no row
-- (rowcount 0) in those cases, and task_exists tells them apart.
INSERT INTO names (queue, name, task_id, expires_at)
SELECT :queue, :name, :id, NULL WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE id = :id)
ON CONFLICT (queue, name) DO UPDATE SET task_id = excluded.task_id, expires_at = NULL
WHERE names.expires_at IS NOT NULL AND names.expires_at <= :now;

-- name: task_exists
SELECT 1 FROM tasks WHERE id = ?;

-- name: insert_task
-- Idempotent by id: a task that exists already, in any state, is left untouched.
INSERT INTO tasks (id, queue, name, payload, visible_at, enqueued_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING;

-- name: claim
-- The due entries of one queue, oldest eta first: ready ones and expired leases are two
-- ranges of the tasks_due index, each walked for at most :limit rows. SET expressions see
-- the row as it was, so `expired` records whether this claim takes over a lease (state 1)
-- that expired, and RETURNING reports it.
UPDATE tasks SET
    expired = (state = 1),
    state = 1,
    attempts = attempts + 1,
    first_attempt_at = coalesce(first_attempt_at, :now),
    token = lower(hex(randomblob(12))),
    visible_at = :until
WHERE seq IN (
    SELECT seq FROM (
        SELECT seq, visible_at FROM (
            SELECT seq, visible_at FROM tasks
            WHERE queue = :queue AND state = 0 AND visible_at <= :now
            ORDER BY visible_at LIMIT :limit)
        UNION ALL
        SELECT seq, visible_at FROM (
            SELECT seq, visible_at FROM tasks
            WHERE queue = :queue AND state = 1 AND visible_at <= :now
            ORDER BY visible_at LIMIT :limit)
    )
    ORDER BY visible_at, seq LIMIT :limit)
RETURNING seq, id, name, payload, attempts, first_attempt_at, enqueued_at, token, expired;

-- name: expired_due
-- Whether a lease of the queue has expired: when none has, a claim takes claim_ready.
SELECT 1 FROM tasks WHERE queue = ? AND state = 1 AND visible_at <= ? LIMIT 1;

-- name: claim_ready
-- claim, when expired_due found no expired lease in this transaction: the ready range
-- alone, walked in the tasks_due index's order with no sort (claim's union of two ranges
-- sorts its rows: a quarter of the claim's cost per task, measured). The same SET and
-- RETURNING as claim; none of these rows takes over a lease.
UPDATE tasks SET
    expired = 0,
    state = 1,
    attempts = attempts + 1,
    first_attempt_at = coalesce(first_attempt_at, :now),
    token = lower(hex(randomblob(12))),
    visible_at = :until
WHERE seq IN (
    SELECT seq FROM tasks
    WHERE queue = :queue AND state = 0 AND visible_at <= :now
    ORDER BY visible_at, seq LIMIT :limit)
RETURNING seq, id, name, payload, attempts, first_attempt_at, enqueued_at, token, expired;

-- name: count_leased
SELECT count(*) FROM tasks WHERE queue = ? AND state = 1 AND visible_at > ?;

-- name: take_tokens
UPDATE queues SET tokens = ?, tokens_at = ? WHERE name = ?;

-- name: ack
-- A finished run wins: the task goes whatever its state and token (leased by another
-- worker after this lease expired, ready again, dead-lettered meanwhile).
DELETE FROM tasks
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING queue, name;

-- name: any_max_concurrent
SELECT 1 FROM queues
WHERE name IN (SELECT value FROM json_each(?)) AND max_concurrent IS NOT NULL
LIMIT 1;

-- name: release_name
-- A removed task's name stays reserved for its queue's dedup window.
UPDATE names SET
    task_id = NULL,
    expires_at = :now + coalesce(
        (SELECT dedup_window FROM queues WHERE queues.name = :queue), :default_window)
WHERE queue = :queue AND name = :name;

-- name: names_gc
DELETE FROM names WHERE (queue, name) IN (
    SELECT queue, name FROM names WHERE expires_at <= ? LIMIT 1000);

-- name: retry
UPDATE tasks SET state = 0, visible_at = :now + :delay, error = :error, token = NULL
WHERE id = :id AND token = :token AND state = 1;

-- name: release
-- Not counted as an attempt; a task that never really ran forgets its first attempt.
UPDATE tasks SET
    state = 0,
    visible_at = :until,
    token = NULL,
    attempts = max(attempts - 1, 0),
    first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END
WHERE id = :id AND token = :token AND state = 1;

-- name: dead_letter
UPDATE tasks SET state = 2, error = :error, traceback = :traceback, failed_at = :now,
    token = NULL
WHERE id = :id AND token = :token AND state = 1;

-- name: extend
-- Returns the lease length applied (the queue's stored lease); no row: the lease is lost.
UPDATE tasks SET visible_at = :now + coalesce(
    (SELECT lease FROM queues WHERE queues.name = tasks.queue), :default_lease)
WHERE id = :id AND token = :token AND state = 1
RETURNING coalesce((SELECT lease FROM queues WHERE queues.name = tasks.queue), :default_lease);

-- name: stats
SELECT state, visible_at <= ? AS due, count(*), min(visible_at) FROM tasks WHERE queue = ?
GROUP BY state, due;

-- name: dead_letters
SELECT id, name, payload, attempts, error, traceback, failed_at FROM tasks
WHERE queue = ? AND state = 2
ORDER BY failed_at, seq LIMIT ?;

-- name: requeue_dead_all
UPDATE tasks SET state = 0, visible_at = :now, attempts = 0, first_attempt_at = NULL,
    error = NULL, traceback = NULL, failed_at = NULL, token = NULL
WHERE queue = :queue AND state = 2;

-- name: requeue_dead_ids
UPDATE tasks SET state = 0, visible_at = :now, attempts = 0, first_attempt_at = NULL,
    error = NULL, traceback = NULL, failed_at = NULL, token = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND +queue = :queue AND +state = 2;

-- name: purge
DELETE FROM tasks WHERE queue = ? AND state = 0 RETURNING name;

-- name: delete_by_id
DELETE FROM tasks WHERE id = ? AND queue = ? RETURNING name, state;

-- name: delete_by_name
DELETE FROM tasks WHERE id = (
    SELECT task_id FROM names WHERE queue = :queue AND name = :name AND expires_at IS NULL)
  AND queue = :queue
RETURNING name, state;

-- name: next_due
-- What wait() needs to know about one queue: the oldest ready eta, the oldest lease
-- expiry, the next expiry among unexpired leases (max_concurrent), and the bucket.
SELECT
    (SELECT min(visible_at) FROM tasks WHERE queue = :queue AND state = 0),
    (SELECT min(visible_at) FROM tasks WHERE queue = :queue AND state = 1),
    (SELECT min(visible_at) FROM tasks
        WHERE queue = :queue AND state = 1 AND visible_at > :now),
    (SELECT count(*) FROM tasks WHERE queue = :queue AND state = 1 AND visible_at > :now),
    q.paused, q.rate, q.bucket, q.max_concurrent, q.tokens, q.tokens_at
FROM (SELECT 1) LEFT JOIN queues AS q ON q.name = :queue;

-- name: metrics_extra
SELECT extra FROM metrics WHERE task = ?;

-- name: record
INSERT INTO metrics (task, count, failures, wall_total, wall_max, cpu_total, cpu_max,
                     mem_peak_max, extra)
VALUES (:task, :count, :failures, :wall_total, :wall_max, :cpu_total, :cpu_max,
        :mem_peak_max, :extra)
ON CONFLICT (task) DO UPDATE SET
    count = count + excluded.count,
    failures = failures + excluded.failures,
    wall_total = wall_total + excluded.wall_total,
    wall_max = max(wall_max, excluded.wall_max),
    cpu_total = cpu_total + excluded.cpu_total,
    cpu_max = max(cpu_max, excluded.cpu_max),
    mem_peak_max = max(mem_peak_max, excluded.mem_peak_max),
    extra = excluded.extra;

-- name: metrics
SELECT task, count, failures, wall_total, wall_max, cpu_total, cpu_max, mem_peak_max, extra
FROM metrics ORDER BY task;
