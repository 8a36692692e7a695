-- notify: wake the idle workers of these queues (at commit of the current transaction).
SELECT pg_notify({channel}, q) FROM unnest(%(queues)s::text[]) AS q
