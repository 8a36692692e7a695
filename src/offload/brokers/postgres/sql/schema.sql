-- offload PostgreSQL broker: the whole schema at the latest migration (version 4).
--
-- A snapshot for readers and for the test that checks the migrations produce it
-- (tests/integration/test_postgres_broker.py). The broker never runs this file: it applies
-- bootstrap.sql and then migrations/NNN_*.sql. Update it with every new migration.

CREATE SCHEMA {schema};

-- Applied migrations (bootstrap.sql creates it).
CREATE TABLE {schema}.schema_version (
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_version_pkey PRIMARY KEY (version)
);

-- One row per task that exists (ready, scheduled, leased or dead). Acked tasks are deleted.
-- visible_at: the eta while ready, the lease expiry while leased.
CREATE TABLE {schema}.tasks (
    id               text             NOT NULL,
    queue            text             NOT NULL,
    name             text,
    payload          bytea            NOT NULL,
    state            text             NOT NULL DEFAULT 'ready',
    visible_at       double precision NOT NULL,
    attempts         integer          NOT NULL DEFAULT 0,
    first_attempt_at double precision,
    enqueued_at      double precision NOT NULL,
    token            text,
    error            text,
    traceback        text,
    failed_at        double precision,
    -- insertion order: the FIFO tie-break between tasks with the same visible_at
    seq              bigint           GENERATED ALWAYS AS IDENTITY,
    CONSTRAINT tasks_pkey PRIMARY KEY (id),
    CONSTRAINT tasks_state_check CHECK (state IN ('ready', 'leased', 'dead')),
    CONSTRAINT tasks_attempts_check CHECK (attempts >= 0),
    CONSTRAINT tasks_leased_token_check CHECK (state <> 'leased' OR token IS NOT NULL),
    CONSTRAINT tasks_dead_failed_at_check CHECK (state <> 'dead' OR failed_at IS NOT NULL),
    CONSTRAINT tasks_first_attempt_check CHECK (first_attempt_at IS NULL OR attempts > 0)
);

-- The claim index: only claimable-or-soon rows (dead ones never are), in eta order. A claim
-- walks it from the oldest entry of each queue and stops after `limit` rows, so its cost
-- does not grow with the backlog; wait() reads the next due time from its first entry.
CREATE INDEX tasks_claim_idx ON {schema}.tasks (queue, visible_at, seq)
    WHERE state IN ('ready', 'leased');

-- Leased tasks by lease expiry: max_concurrent's count and the next expiry, without
-- walking the ready backlog.
CREATE INDEX tasks_leased_idx ON {schema}.tasks (queue, visible_at) WHERE state = 'leased';

-- Dead letters, oldest failure first.
CREATE INDEX tasks_dead_idx ON {schema}.tasks (queue, failed_at) WHERE state = 'dead';

-- Task names, unique per queue: a row exists while the named task exists in any state
-- (expires_at NULL) and after it was removed until expires_at = removal + dedup_window.
-- Enqueue reserves a name with INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now,
-- which locks the row, so a name cannot be handed out twice even while an ack races.
CREATE TABLE {schema}.names (
    queue      text             NOT NULL,
    name       text             NOT NULL,
    expires_at double precision,
    CONSTRAINT names_pkey PRIMARY KEY (queue, name)
);

-- Finds expired reservations for garbage collection.
CREATE INDEX names_expires_idx ON {schema}.names (expires_at) WHERE expires_at IS NOT NULL;

-- Declared queues: the policy the broker enforces, pause, and the token bucket's state.
-- An undeclared queue has no row and runs with QueuePolicy defaults.
CREATE TABLE {schema}.queues (
    name           text             NOT NULL,
    rate           double precision,             -- tokens per second; NULL: unlimited
    bucket         double precision,             -- bucket capacity; NULL when rate is NULL
    max_concurrent integer,                      -- NULL: unlimited
    lease          double precision NOT NULL DEFAULT 60,
    dedup_window   double precision NOT NULL DEFAULT 3600,
    paused         boolean          NOT NULL DEFAULT false,
    tokens         double precision,             -- tokens left at tokens_at; NULL: full
    tokens_at      double precision,
    declared       boolean          NOT NULL DEFAULT true,  -- false: a row made by pausing alone
    retry          jsonb,                        -- the retry override; NULL: none
    CONSTRAINT queues_pkey PRIMARY KEY (name),
    CONSTRAINT queues_rate_check CHECK (rate IS NULL OR (rate > 0 AND bucket >= 1)),
    CONSTRAINT queues_max_concurrent_check CHECK (max_concurrent IS NULL OR max_concurrent >= 1),
    CONSTRAINT queues_lease_check CHECK (lease > 0),
    CONSTRAINT queues_dedup_window_check CHECK (dedup_window >= 0)
);

-- Per task function aggregates written by workers (record/metrics).
CREATE TABLE {schema}.metrics (
    task         text             NOT NULL,
    count        bigint           NOT NULL DEFAULT 0,
    failures     bigint           NOT NULL DEFAULT 0,
    wall_total   double precision NOT NULL DEFAULT 0,
    wall_max     double precision NOT NULL DEFAULT 0,
    cpu_total    double precision NOT NULL DEFAULT 0,
    cpu_max      double precision NOT NULL DEFAULT 0,
    mem_peak_max bigint           NOT NULL DEFAULT 0,
    extra        jsonb            NOT NULL DEFAULT '{}',  -- name -> number (see record.sql)
    CONSTRAINT metrics_pkey PRIMARY KEY (task)
);

-- Stored task outcomes (offload.brokers.base.ResultStore), keyed by the task id; kept until
-- expires_at (epoch seconds, the server's clock), swept a thousand at a time by put.
CREATE TABLE {schema}.results (
    key        text             NOT NULL,
    value      bytea            NOT NULL,
    expires_at double precision NOT NULL,
    CONSTRAINT results_pkey PRIMARY KEY (key)
);

-- Finds expired results for the sweep.
CREATE INDEX results_expires ON {schema}.results (expires_at);
