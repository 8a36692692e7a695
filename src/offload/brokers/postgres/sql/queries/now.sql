-- now: the broker's clock, epoch seconds.
SELECT extract(epoch FROM clock_timestamp())::float8
