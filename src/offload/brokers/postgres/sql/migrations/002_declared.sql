-- offload PostgreSQL broker, migration 2: queues.declared.
--
-- stats() reports the policy a queue runs under only for a declared queue. Pausing an
-- undeclared queue makes a row with the default policy; declared = false marks it, so that
-- such a queue still reports no policy until a declare. Existing rows were all declared or
-- paused; they count as declared (a paused-only row then reports the default policy).
ALTER TABLE {schema}.queues ADD COLUMN declared boolean NOT NULL DEFAULT true;
