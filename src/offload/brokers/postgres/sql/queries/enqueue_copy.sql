-- enqueue_copy: bulk enqueue of a batch without names, by COPY (about 1.5x the rows per
-- second of enqueue.sql's unnest at 1,000 tasks). visible_at and enqueued_at come from
-- copy_prepare.sql read in the same transaction, which also names the ids that exist
-- already (left out of the COPY); notify.sql follows in the same transaction.
COPY {schema}.tasks (id, queue, payload, visible_at, enqueued_at) FROM STDIN
