-- retry_overrides: the stored retry overrides of some queues (those that have one).
SELECT name, retry FROM {schema}.queues
WHERE name = ANY(%(queues)s::text[]) AND retry IS NOT NULL
