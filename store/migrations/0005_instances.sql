-- Instances (replicas): a sample belongs to (task, service, instance,
-- resource, ts). Two replicas of one service at one tick are two samples,
-- never a duplicate. Rows stored before this migration get the instance
-- "default" (id 0); nothing is rewritten but the key's index.
CREATE TABLE IF NOT EXISTS instances (
    id   SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO instances (id, name) VALUES (0, 'default') ON CONFLICT DO NOTHING;

-- A constant default: metadata only, no table rewrite (PostgreSQL 11+).
ALTER TABLE samples ADD COLUMN IF NOT EXISTS instance_id INT NOT NULL DEFAULT 0;
ALTER TABLE samples DROP CONSTRAINT IF EXISTS samples_pkey;
ALTER TABLE samples ADD PRIMARY KEY (task_id, service_id, instance_id, resource_id, ts);

-- Which instances reported each service in each task, with their extent:
-- instance counts and per-replica views read this small table.
CREATE TABLE IF NOT EXISTS service_instances (
    task_id     TEXT NOT NULL,
    service_id  INT NOT NULL,
    instance_id INT NOT NULL,
    first_ts    TIMESTAMPTZ NOT NULL,
    last_ts     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, service_id, instance_id)
);
INSERT INTO service_instances (task_id, service_id, instance_id, first_ts, last_ts)
    SELECT task_id, service_id, 0, min(first_ts), max(last_ts) FROM series
    GROUP BY task_id, service_id
ON CONFLICT DO NOTHING;

-- Pressure and limits: what the allocator learns from.
INSERT INTO resources (name, unit) VALUES
    ('oom_kills', 'kills'),
    ('cpu_throttled', 'seconds/s'),
    ('memory_limit', 'bytes'),
    ('cpu_limit', 'cores')
ON CONFLICT (name) DO NOTHING;
