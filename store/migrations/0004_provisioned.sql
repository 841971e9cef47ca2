-- What operators allocated, as imported from public traces (Alibaba's
-- container request and memory size, Bitbrains' provisioned cores and
-- memory): one value per (task, service, resource) and time, in the
-- resource's unit. Backtests replay it as the "provisioned" strategy.
CREATE TABLE IF NOT EXISTS provisioned (
    task_id     TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    service_id  INT NOT NULL REFERENCES services (id),
    resource_id INT NOT NULL REFERENCES resources (id),
    ts          TIMESTAMPTZ NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (task_id, service_id, resource_id, ts)
);
