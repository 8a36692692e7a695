-- ack: the function of migration 005 (sql/migrations/005_claim_functions.sql), which
-- says what an ack does. The ids go in binary: a text array costs the client a quoting
-- check per id (2 us each, measured).
SELECT {schema}.ack(%(ids)b::text[])
