-- offload PostgreSQL broker, migration 5: the worker's claim and ack as functions.
--
-- A claim was two statements in one round trip (lock the limited queues' rows, then
-- claim), and a handler thread's claim three (with its acks). psycopg's client work per
-- statement (about 100 us of CPU) cost more than the rows: one call of claim() is a
-- quarter less of the worker's CPU per claim of 64 than the two statements were. No table
-- changes; a worker of an older offload keeps running its own statements.
--
-- Both commit without waiting for the WAL flush (set LOCAL, for their transaction only):
-- a claim lost in a server crash only makes its tasks claimable again, as when a worker
-- dies, and a lost ack only runs a finished task again (at-least-once).

-- ack: delete finished tasks; how many went. A finished run wins: the task goes whatever
-- its state and token (leased by this lease; leased again by another worker after this
-- lease expired; ready again after the expiry; dead-lettered meanwhile as "worker died");
-- unknown ids match nothing. A named task's name stays reserved for its queue's
-- dedup_window. A queue with max_concurrent is notified: a slot came free for an idle
-- worker (the leased count is read from the rows, so a task leased by someone else no
-- longer counts once deleted).
CREATE FUNCTION {schema}.ack(p_ids text[]) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    gone_count bigint;
BEGIN
    -- the commit mode is set in the statement itself, not by one of its own (see claim)
    WITH now_ AS (
        SELECT extract(epoch FROM clock_timestamp())::float8 AS t,
               set_config('synchronous_commit', 'off', true) AS commit_mode
    ),
    gone AS (
        DELETE FROM {schema}.tasks t
        WHERE t.id = ANY(p_ids) AND (SELECT commit_mode FROM now_) = 'off'
        RETURNING t.queue, t.name
    ),
    names AS (
        UPDATE {schema}.names n
        SET expires_at = now_.t + coalesce(q.dedup_window, 3600)
        FROM gone g
        CROSS JOIN now_
        LEFT JOIN {schema}.queues q ON q.name = g.queue
        WHERE g.name IS NOT NULL AND n.queue = g.queue AND n.name = g.name
    ),
    woken AS (
        SELECT pg_notify({channel}, q.name)
        FROM {schema}.queues q
        WHERE q.max_concurrent IS NOT NULL AND q.name IN (SELECT queue FROM gone)
    )
    SELECT count(*) INTO gone_count FROM gone WHERE (SELECT count(*) FROM woken) >= 0;
    RETURN gone_count;
END
$fn$;

-- claim: ack p_acks (a handler thread's finished tasks, none for the event loop's
-- claims), then lease up to p_limit due tasks of p_queues, in one transaction.
--
-- First the rows of the requested queues that have a rate or max_concurrent are locked,
-- in name order (no deadlock between claimers): claimers of such a queue take turns.
-- The claim that follows is a statement of its own, so under READ COMMITTED its snapshot
-- is taken after the lock was granted and its count of leased tasks includes every claim
-- committed before. (In a single statement the snapshot would come first: that is why
-- this is a function.) Unlimited queues are not locked: their claimers run in parallel on
-- SKIP LOCKED alone.
--
-- The claim, per queue: skip when paused; allowance = min(p_limit, whole tokens in the
-- bucket, max_concurrent - leased now); take that many of the oldest due rows (ready, or
-- leased with an expired lease) FOR UPDATE SKIP LOCKED; then share p_limit round-robin
-- across queues (first task of each queue, then the second, ...; the queue that goes
-- first rotates with p_turn so that claims of 1 serve every queue), lease them, and take
-- the tokens. `expired` is read from the row as it was before the UPDATE (a leased row is
-- only due when its lease expired): the claim takes over an attempt that ended without a
-- verdict.
CREATE FUNCTION {schema}.claim(p_queues text[], p_limit integer, p_turn bigint,
                               p_acks text[])
RETURNS TABLE (id text, queue text, name text, payload bytea, attempts integer,
               first_attempt_at double precision, enqueued_at double precision,
               now double precision, token text, visible_at double precision,
               expired boolean)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
BEGIN
    -- the setting and the lock in one statement: each statement of a function costs the
    -- server an executor start-up (measured: as two, the function cost the server 3 us
    -- per task more than the pipeline did; as one, no more than the pipeline)
    PERFORM set_config('synchronous_commit', 'off', true), (SELECT count(*) FROM (
        SELECT q.name
        FROM {schema}.queues q
        WHERE q.name = ANY(p_queues) AND p_limit > 0
          AND (q.rate IS NOT NULL OR q.max_concurrent IS NOT NULL)
          AND NOT q.paused
        ORDER BY q.name
        FOR UPDATE) locked);
    IF cardinality(p_acks) > 0 THEN
        PERFORM {schema}.ack(p_acks);
    END IF;
    IF p_limit <= 0 OR cardinality(p_queues) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH now_ AS (
        SELECT extract(epoch FROM clock_timestamp())::float8 AS t
    ),
    qs AS (
        SELECT r.name, (r.ord + p_turn::bigint) % cardinality(p_queues::text[]) AS ord,
               coalesce(q.lease, 60) AS lease,
               q.rate,
               q.max_concurrent,
               CASE WHEN q.rate IS NOT NULL THEN
                   least(q.bucket, coalesce(q.tokens, q.bucket)
                                   + greatest(0, now_.t - coalesce(q.tokens_at, now_.t)) * q.rate)
               END AS tokens
        FROM unnest(p_queues::text[]) WITH ORDINALITY AS r(name, ord)
        CROSS JOIN now_
        LEFT JOIN {schema}.queues q ON q.name = r.name
        WHERE NOT coalesce(q.paused, false)
    ),
    allow AS (
        SELECT qs.*,
               greatest(0, least(
                   p_limit::int,
                   coalesce(floor(qs.tokens)::int, p_limit::int),
                   CASE WHEN qs.max_concurrent IS NULL THEN p_limit::int
                        ELSE qs.max_concurrent - (
                            SELECT count(*)::int FROM {schema}.tasks t, now_
                            WHERE t.queue = qs.name AND t.state = 'leased' AND t.visible_at > now_.t)
                   END)) AS n
        FROM qs
    ),
    cand AS (
        SELECT c.id, c.visible_at, c.seq, a.name AS queue, a.ord, a.lease,
               c.state = 'leased' AS expired,
               row_number() OVER (PARTITION BY a.name ORDER BY c.visible_at, c.seq) AS rn
        FROM allow a
        CROSS JOIN now_
        CROSS JOIN LATERAL (
            SELECT t.id, t.visible_at, t.seq, t.state
            FROM {schema}.tasks t
            WHERE t.queue = a.name AND t.state IN ('ready', 'leased') AND t.visible_at <= now_.t
            ORDER BY t.visible_at, t.seq
            LIMIT a.n
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE a.n > 0
    ),
    pick AS (
        SELECT * FROM cand ORDER BY rn, ord LIMIT p_limit::int
    ),
    claimed AS (
        UPDATE {schema}.tasks t
        SET state = 'leased',
            attempts = t.attempts + 1,
            first_attempt_at = coalesce(t.first_attempt_at, now_.t),
            token = gen_random_uuid()::text,
            visible_at = now_.t + p.lease
        FROM pick p CROSS JOIN now_
        WHERE t.id = p.id
        RETURNING t.id, t.queue, t.name, t.payload, t.attempts, t.first_attempt_at,
                  t.enqueued_at, t.token, t.visible_at, p.rn, p.ord, p.expired
    ),
    spent AS (
        UPDATE {schema}.queues q
        SET tokens = a.tokens - c.k, tokens_at = now_.t
        FROM (SELECT queue, count(*) AS k FROM claimed GROUP BY queue) c, allow a, now_
        WHERE q.name = c.queue AND a.name = c.queue AND a.rate IS NOT NULL
    )
    SELECT c.id, c.queue, c.name, c.payload, c.attempts, c.first_attempt_at, c.enqueued_at,
           now_.t, c.token, c.visible_at, c.expired
    FROM claimed c CROSS JOIN now_
    ORDER BY c.rn, c.ord;
END
$fn$;
