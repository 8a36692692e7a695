-- enqueue: insert a batch of tasks; returns the ids created, and the ids that exist already
-- (idempotent by id: such a task is left as it is, in any state, its name not taken again,
-- nobody woken; a batch holding one id twice creates its first occurrence). A duplicate name
-- is left out. The same text runs on the broker's pool and, for transactional enqueue, on
-- the caller's own connection inside the caller's transaction: the NOTIFY is sent at
-- commit, never on rollback. Parameters are parallel arrays, one element per task; the
-- text and bytea ones go in binary (in text, the client quotes every text and hex-encodes
-- every payload: 2-3 us per element, measured).
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
given AS (
    SELECT *
    FROM unnest(%(ids)b::text[], %(queues)b::text[], %(names)b::text[], %(payloads)b::bytea[],
                %(etas)s::float8[], %(delays)s::float8[])
         WITH ORDINALITY AS i(id, queue, name, payload, eta, delay, ord)
),
known AS (
    SELECT t.id FROM {schema}.tasks t WHERE t.id IN (SELECT id FROM given)
),
-- the tasks to create: the first occurrence of each id that does not exist yet
input AS (
    SELECT DISTINCT ON (g.id) g.*
    FROM given g
    WHERE g.id NOT IN (SELECT id FROM known)
    ORDER BY g.id, g.ord
),
-- the first task of each (queue, name) in the batch competes for the name; later ones
-- of the same batch are duplicates of it
firsts AS (
    SELECT DISTINCT ON (queue, name) id, queue, name
    FROM input
    WHERE name IS NOT NULL
    ORDER BY queue, name, ord
),
-- take a free name, or a reservation whose dedup window has passed; the row lock of
-- ON CONFLICT DO UPDATE serialises racing enqueues and acks of the same name
reserved AS (
    INSERT INTO {schema}.names AS n (queue, name, expires_at)
    SELECT queue, name, NULL FROM firsts
    ON CONFLICT (queue, name) DO UPDATE SET expires_at = NULL
        WHERE n.expires_at <= extract(epoch FROM clock_timestamp())
    RETURNING n.queue, n.name
),
ins AS (
    INSERT INTO {schema}.tasks (id, queue, name, payload, state, visible_at, enqueued_at)
    SELECT i.id, i.queue, i.name, i.payload, 'ready', coalesce(i.eta, now_.t + i.delay), now_.t
    FROM input i CROSS JOIN now_
    WHERE i.name IS NULL
       OR i.id IN (SELECT f.id FROM firsts f JOIN reserved r USING (queue, name))
    ORDER BY i.ord
    ON CONFLICT (id) DO NOTHING
    RETURNING id, queue
),
woken AS (
    SELECT pg_notify({channel}, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT id FROM ins WHERE (SELECT count(*) FROM woken) >= 0
UNION ALL
SELECT id FROM known
