-- Run by the migration runner before the migrations, in the same transaction. The advisory
-- lock (keyed by the schema's notify channel name, unique per schema) makes concurrent
-- openers take turns: the first migrates, the others find the work done.
SELECT pg_advisory_xact_lock(hashtext({channel}));
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schema_version_pkey PRIMARY KEY (version)
);
