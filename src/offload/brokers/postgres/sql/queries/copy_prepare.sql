-- copy_prepare: enqueue_copy.sql's first step, in its transaction: the broker's clock (for
-- visible_at and enqueued_at) and which of the batch's ids exist already, so the COPY
-- leaves them out (idempotent by id; COPY has no ON CONFLICT). The ids go in binary (see
-- enqueue.sql).
SELECT extract(epoch FROM clock_timestamp())::float8,
       ARRAY(SELECT t.id FROM {schema}.tasks t WHERE t.id = ANY(%(ids)b::text[]))
