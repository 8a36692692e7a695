-- claim: the function of migration 005 (sql/migrations/005_claim_functions.sql), which
-- says what a claim does. One statement: psycopg's work per statement is the worker's
-- largest cost of a claim. The acks: a handler thread's finished tasks, acked first in
-- the same transaction (none for the event loop's claims). The ids go in binary (see
-- ack.sql).
SELECT * FROM {schema}.claim(%(queues)s::text[], %(limit)s::int, %(turn)s::bigint,
                             %(acks)b::text[])
