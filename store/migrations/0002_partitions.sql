-- Time partitioning of samples on plain PostgreSQL: samples becomes a table
-- partitioned by range of ts, with a default partition for samples outside
-- the prepared ranges. The collector creates the range partitions ahead of
-- time, drains the default partition into them, and drops whole partitions
-- past the retention period (store/lifecycle.rs). With TimescaleDB the
-- hypertable from 0001 stays; its chunks do the same job.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'samples'::regclass) THEN
        RETURN;
    END IF;
    ALTER TABLE samples RENAME TO samples_unpartitioned;
    ALTER INDEX samples_pkey RENAME TO samples_unpartitioned_pkey;
    ALTER INDEX samples_ts_brin RENAME TO samples_unpartitioned_ts_brin;
    CREATE TABLE samples (
        task_id     TEXT NOT NULL,
        service_id  INT NOT NULL,
        resource_id INT NOT NULL,
        value       DOUBLE PRECISION NOT NULL,
        ts          TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (task_id, service_id, resource_id, ts)
    ) PARTITION BY RANGE (ts);
    CREATE INDEX samples_ts_brin ON samples USING brin (ts);
    CREATE TABLE samples_default PARTITION OF samples DEFAULT;
    INSERT INTO samples SELECT task_id, service_id, resource_id, value, ts FROM samples_unpartitioned;
    DROP TABLE samples_unpartitioned;
END
$$;
