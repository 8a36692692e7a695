-- drop_queue: forget a queue: its tasks in every state, its names, its stored policy and
-- pause. Returns how many tasks went.
WITH gone AS (
    DELETE FROM {schema}.tasks WHERE queue = %(queue)s::text RETURNING 1
),
names AS (
    DELETE FROM {schema}.names WHERE queue = %(queue)s::text
),
q AS (
    DELETE FROM {schema}.queues WHERE name = %(queue)s::text
)
SELECT count(*) FROM gone
