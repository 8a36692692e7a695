-- offload SQLite broker schema, version 1 (PRAGMA user_version = 1).
--
-- Applied once, in one BEGIN IMMEDIATE transaction, to a database whose user_version is 0.
-- A later version adds a file migrate_<n>.sql that takes version n-1 to n; never edit this
-- file once released.

-- One row per task that exists (ready, scheduled, leased or dead). Acked tasks are deleted.
-- state: 0 ready (visible_at = eta), 1 leased (visible_at = lease expiry), 2 dead.
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY,  -- rowid: insertion order, FIFO tie-break
    id               TEXT    NOT NULL UNIQUE,
    queue            TEXT    NOT NULL,
    name             TEXT,
    payload          BLOB    NOT NULL,
    state            INTEGER NOT NULL DEFAULT 0,
    visible_at       REAL    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    enqueued_at      REAL    NOT NULL,
    token            TEXT,
    error            TEXT,
    traceback        TEXT,
    failed_at        REAL
);

-- The claim index: per queue and state, in eta order. A claim walks it from the oldest due
-- entry and stops after `limit` rows, so its cost is O(batch) whatever the backlog; it also
-- answers wait()'s "next due time" with two index probes and stats() without the payloads.
CREATE INDEX tasks_due ON tasks (queue, state, visible_at);

-- Task names, unique per queue. A row exists while the task exists (expires_at NULL,
-- task_id set) and after it was removed until expires_at (now + the queue's dedup_window).
CREATE TABLE names (
    queue      TEXT NOT NULL,
    name       TEXT NOT NULL,
    task_id    TEXT,
    expires_at REAL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;

CREATE INDEX names_expiry ON names (expires_at) WHERE expires_at IS NOT NULL;

-- Declared queues: the policy the broker enforces, pause, and the token bucket's state.
-- An undeclared queue has no row and runs with QueuePolicy defaults.
CREATE TABLE queues (
    name           TEXT    PRIMARY KEY,
    rate           REAL,               -- tokens per second; NULL: unlimited
    bucket         REAL,               -- token bucket capacity; NULL when rate is NULL
    max_concurrent INTEGER,            -- NULL: unlimited
    lease          REAL    NOT NULL,
    dedup_window   REAL    NOT NULL,
    paused         INTEGER NOT NULL DEFAULT 0,
    tokens         REAL,               -- tokens left at tokens_at (kept across re-declares)
    tokens_at      REAL
) WITHOUT ROWID;

-- Per task function aggregates written by workers (record/metrics).
CREATE TABLE metrics (
    task         TEXT    PRIMARY KEY,
    count        INTEGER NOT NULL DEFAULT 0,
    failures     INTEGER NOT NULL DEFAULT 0,
    wall_total   REAL    NOT NULL DEFAULT 0,
    wall_max     REAL    NOT NULL DEFAULT 0,
    cpu_total    REAL    NOT NULL DEFAULT 0,
    cpu_max      REAL    NOT NULL DEFAULT 0,
    mem_peak_max INTEGER NOT NULL DEFAULT 0,
    extra        TEXT    NOT NULL DEFAULT '{}'  -- JSON object name -> number
) WITHOUT ROWID;
