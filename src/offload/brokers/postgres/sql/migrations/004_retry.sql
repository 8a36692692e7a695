-- offload PostgreSQL broker, migration 4: queues.retry, a queue's retry override.
--
-- The queue's retry policy as an operator set it through an API (Cloud Tasks'
-- retryConfig), as a JSON object of the five numbers (offload.brokers.overrides); NULL:
-- none, workers judge failures by their own App's declaration. declare never writes it;
-- dropping the queue deletes it. A nullable column without a default: no row is rewritten,
-- every queue keeps its policy, pause and bucket.
ALTER TABLE {schema}.queues ADD COLUMN retry jsonb;
