-- claim, step 2: lease up to %(limit)s due tasks of the requested queues in ONE statement.
-- Per queue: skip when paused; allowance = min(limit, whole tokens in the bucket,
-- max_concurrent - leased now); take that many of the oldest due rows (ready, or leased with
-- an expired lease) FOR UPDATE SKIP LOCKED; then share %(limit)s round-robin across queues
-- (first task of each queue, then the second, ...; the queue that goes first rotates with
-- %(turn)s so that claims of 1 serve every queue), lease them, and take the tokens.
-- `expired` is read from the row as it was before the UPDATE (a leased row is only due when
-- its lease expired): the claim takes over an attempt that ended without a verdict.
WITH now_ AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS t
),
qs AS (
    SELECT r.name, (r.ord + %(turn)s::bigint) %% cardinality(%(queues)s::text[]) AS ord,
           coalesce(q.lease, 60) AS lease,
           q.rate,
           q.max_concurrent,
           CASE WHEN q.rate IS NOT NULL THEN
               least(q.bucket, coalesce(q.tokens, q.bucket)
                               + greatest(0, now_.t - coalesce(q.tokens_at, now_.t)) * q.rate)
           END AS tokens
    FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS r(name, ord)
    CROSS JOIN now_
    LEFT JOIN {schema}.queues q ON q.name = r.name
    WHERE NOT coalesce(q.paused, false)
),
allow AS (
    SELECT qs.*,
           greatest(0, least(
               %(limit)s::int,
               coalesce(floor(qs.tokens)::int, %(limit)s::int),
               CASE WHEN qs.max_concurrent IS NULL THEN %(limit)s::int
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
    SELECT * FROM cand ORDER BY rn, ord LIMIT %(limit)s::int
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
ORDER BY c.rn, c.ord
