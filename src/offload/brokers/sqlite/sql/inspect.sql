-- The SQLite broker's task inspection (TaskInspection, loaded by inspection.py): looking
-- at tasks one by one, running one now, dropping a queue. Off the hot path.
-- Task states: 0 ready, 1 leased, 2 dead.

-- name: get_task
SELECT id, name, payload, state, visible_at, attempts, first_attempt_at, enqueued_at,
    error, traceback, failed_at
FROM tasks WHERE id = ? AND queue = ?;

-- name: list_tasks
-- Id order through the unique index on id (ids sort by creation time).
SELECT id, name, payload, state, visible_at, attempts, first_attempt_at, enqueued_at,
    error, traceback, failed_at
FROM tasks WHERE id > :after AND queue = :queue
ORDER BY id LIMIT :limit;

-- name: run_task
-- A ready or scheduled task becomes due now; one due already keeps its place.
UPDATE tasks SET visible_at = min(visible_at, :now)
WHERE id = :id AND queue = :queue AND state = 0;

-- name: drop_tasks
DELETE FROM tasks WHERE queue = ?;

-- name: drop_names
DELETE FROM names WHERE queue = ?;

-- name: drop_queue_row
DELETE FROM queues WHERE name = ?;
