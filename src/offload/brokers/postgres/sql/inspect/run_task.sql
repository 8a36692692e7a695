-- run_task: a ready or scheduled task becomes due now (one due already keeps its place);
-- idle workers of its queue hear of it at commit. One row when the task is ready.
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
done AS (
    UPDATE {schema}.tasks
    SET visible_at = least(visible_at, now_.t)
    FROM now_
    WHERE id = %(id)s::text AND queue = %(queue)s::text AND state = 'ready'
    RETURNING queue
)
SELECT pg_notify({channel}, queue) FROM done
