-- The collector's schema, kept compatible with the Python prototype:
-- lookup tables services(id, name) and resources(id, name), the main table
-- (task_id, service_id, resource_id, value, ts), plus tasks.

CREATE TABLE IF NOT EXISTS services (
    id   SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS resources (
    id   SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    unit TEXT NOT NULL
);

INSERT INTO resources (name, unit) VALUES
    ('cpu', 'cores'),
    ('memory', 'bytes'),
    ('disk_read', 'bytes/s'),
    ('disk_write', 'bytes/s'),
    ('net_rx', 'bytes/s'),
    ('net_tx', 'bytes/s')
ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS tasks (
    id       TEXT PRIMARY KEY,
    start_ts TIMESTAMPTZ NOT NULL,
    end_ts   TIMESTAMPTZ,
    services TEXT[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_start_idx ON tasks (start_ts DESC);

-- One row per sample. The natural key makes re-delivery harmless.
CREATE TABLE IF NOT EXISTS samples (
    task_id     TEXT NOT NULL,
    service_id  INT NOT NULL,
    resource_id INT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, service_id, resource_id, ts)
);
CREATE INDEX IF NOT EXISTS samples_ts_brin ON samples USING brin (ts);

-- Every stored series with its extent: lists, paging and task filters read
-- this small table instead of scanning samples.
CREATE TABLE IF NOT EXISTS series (
    task_id     TEXT NOT NULL,
    service_id  INT NOT NULL,
    resource_id INT NOT NULL,
    first_ts    TIMESTAMPTZ NOT NULL,
    last_ts     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, service_id, resource_id)
);
CREATE INDEX IF NOT EXISTS series_service_idx ON series (service_id);

-- TimescaleDB, where present: samples become a hypertable.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('samples', 'ts', if_not_exists => TRUE, migrate_data => TRUE);
    END IF;
END
$$;
