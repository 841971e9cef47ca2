-- Per-minute and per-hour aggregates of each series, maintained as batches
-- are committed and kept far longer than raw samples: count, sum and sum of
-- squares (mean, standard deviation), min, max, and a mergeable quantile sketch (store/sketch.rs) from
-- which p50/p90/p95/p99 of any span of buckets are read within 1 %.
CREATE TABLE IF NOT EXISTS rollup_1m (
    task_id     TEXT NOT NULL,
    service_id  INT NOT NULL,
    resource_id INT NOT NULL,
    bucket      TIMESTAMPTZ NOT NULL,
    count       BIGINT NOT NULL,
    sum         DOUBLE PRECISION NOT NULL,
    sum_sq      DOUBLE PRECISION NOT NULL,
    min         DOUBLE PRECISION NOT NULL,
    max         DOUBLE PRECISION NOT NULL,
    sketch      BYTEA NOT NULL,
    PRIMARY KEY (task_id, service_id, resource_id, bucket)
);
CREATE INDEX IF NOT EXISTS rollup_1m_bucket_brin ON rollup_1m USING brin (bucket);

-- Statistics select by service and resource across tasks.
CREATE INDEX IF NOT EXISTS rollup_1m_series_idx ON rollup_1m (service_id, resource_id, bucket);

CREATE TABLE IF NOT EXISTS rollup_1h (LIKE rollup_1m INCLUDING ALL);

-- The raw horizon: raw samples before this time were removed by retention,
-- so queries reaching before it read the rollups.
CREATE TABLE IF NOT EXISTS raw_horizon (
    id    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    since TIMESTAMPTZ NOT NULL
);
