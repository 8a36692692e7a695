-- offload SQLite broker schema, version 1 -> 2 (PRAGMA user_version = 2).
--
-- Applied in the same BEGIN IMMEDIATE transaction as any earlier step; never edit once
-- released. Both columns are added with constant defaults, so SQLite rewrites no row.

-- 1 when the task's last claim took over a lease that had expired: the attempt before it
-- ended without a verdict (its worker died, hung or lost the lease). Set by the claim
-- itself, from the state the row had before it (Claimed.expired).
ALTER TABLE tasks ADD COLUMN expired INTEGER NOT NULL DEFAULT 0;

-- When the queue was last declared; NULL for a row that set_paused created for a queue
-- never declared (stats then reports no enforced policy). Version 1 always set tokens_at
-- on a declaration, and only there, so it tells which rows were declared.
ALTER TABLE queues ADD COLUMN declared_at REAL;
UPDATE queues SET declared_at = tokens_at;
