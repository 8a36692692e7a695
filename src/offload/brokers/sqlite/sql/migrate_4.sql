-- offload SQLite broker schema, version 3 -> 4 (PRAGMA user_version = 4): retry overrides.
--
-- Applied in the same BEGIN IMMEDIATE transaction as any earlier step; never edit once
-- released. The column is added with a NULL default, so SQLite rewrites no row and every
-- queue keeps its policy, pause and bucket.

-- The queue's retry policy as an operator set it through an API (Cloud Tasks'
-- retryConfig), as JSON (offload.brokers.overrides); NULL: none, workers judge failures by
-- their own App's declaration. declare never writes it; dropping the queue deletes it.
ALTER TABLE queues ADD COLUMN retry TEXT;
