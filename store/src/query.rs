//! Read queries: lookups, tasks, series, statistics and exports. Every value
//! reaches SQL as a bound parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};

use crate::error::{Error, Result};

/// A filter with names resolved to ids. `None` means "all".
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Service ids.
    pub service_ids: Option<Vec<i32>>,
    /// Resource ids.
    pub resource_ids: Option<Vec<i32>>,
    /// Task ids.
    pub task_ids: Option<Vec<String>>,
    /// Instance ids: only these replicas. `None` pools every instance.
    /// Rollups pool instances, so a filter naming instances reads raw
    /// samples.
    pub instance_ids: Option<Vec<i32>>,
    /// Inclusive start.
    pub start: Option<DateTime<Utc>>,
    /// Exclusive end.
    pub end: Option<DateTime<Utc>>,
}

/// Resolves names to ids; unknown names are `NotFound`, naming each one.
pub async fn resolve_filter(
    pool: &PgPool,
    services: &[String],
    resources: &[String],
    task_ids: &[String],
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Result<Filter> {
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(Error::InvalidArgument(format!(
            "time range is empty or reversed: start {s} is not before end {e}"
        )));
    }
    let service_ids = resolve_names(pool, "services", "service", services).await?;
    let resource_ids = resolve_names(pool, "resources", "resource", resources).await?;
    let task_ids = if task_ids.is_empty() {
        None
    } else {
        let found: Vec<String> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = ANY($1)")
            .bind(task_ids)
            .fetch_all(pool)
            .await?;
        let missing: Vec<&String> = task_ids.iter().filter(|t| !found.contains(t)).collect();
        if !missing.is_empty() {
            return Err(Error::NotFound(format!(
                "unknown task(s): {}",
                join(&missing)
            )));
        }
        Some(task_ids.to_vec())
    };
    Ok(Filter {
        service_ids,
        resource_ids,
        task_ids,
        instance_ids: None,
        start,
        end,
    })
}

/// `filter` narrowed to the instances named (none: every instance);
/// unknown names are `NotFound`, naming each one and the known ones.
pub async fn with_instances(pool: &PgPool, filter: Filter, instances: &[String]) -> Result<Filter> {
    Ok(Filter {
        instance_ids: resolve_names(pool, "instances", "instance", instances).await?,
        ..filter
    })
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn resolve_names(
    pool: &PgPool,
    table: &str,
    what: &str,
    names: &[String],
) -> Result<Option<Vec<i32>>> {
    if names.is_empty() {
        return Ok(None);
    }
    // `table` is one of two constants above, never input.
    let rows: Vec<(i32, String)> = sqlx::query_as(&format!(
        "SELECT id, name FROM {table} WHERE name = ANY($1)"
    ))
    .bind(names)
    .fetch_all(pool)
    .await?;
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !rows.iter().any(|(_, name)| name == *n))
        .collect();
    if !missing.is_empty() {
        let known: Vec<String> =
            sqlx::query_scalar(&format!("SELECT name FROM {table} ORDER BY name LIMIT 50"))
                .fetch_all(pool)
                .await?;
        return Err(Error::NotFound(format!(
            "unknown {what}(s): {} (known: {})",
            join(&missing),
            known.join(", ")
        )));
    }
    Ok(Some(rows.into_iter().map(|(id, _)| id).collect()))
}

/// A row of a lookup table.
#[derive(Debug, Clone, FromRow)]
pub struct NamedRow {
    /// Id.
    pub id: i32,
    /// Name.
    pub name: String,
    /// Its replicas: the most instances that reported it in one task
    /// (services only; a replaced pod counts in the task it ran in).
    pub instances: i64,
}

/// Every service, by name, with how many distinct instances reported it.
pub async fn list_services(pool: &PgPool) -> Result<Vec<NamedRow>> {
    Ok(sqlx::query_as(
        "SELECT s.id, s.name, count(DISTINCT i.instance_id) AS instances \
             FROM services s LEFT JOIN service_instances i ON i.service_id = s.id \
             GROUP BY s.id, s.name ORDER BY s.name",
    )
    .fetch_all(pool)
    .await?)
}

/// A resource with its unit.
#[derive(Debug, Clone, FromRow)]
pub struct ResourceRow {
    /// Id.
    pub id: i32,
    /// Name.
    pub name: String,
    /// Unit.
    pub unit: String,
}

/// Every resource, by name.
pub async fn list_resources(pool: &PgPool) -> Result<Vec<ResourceRow>> {
    Ok(
        sqlx::query_as("SELECT id, name, unit FROM resources ORDER BY name")
            .fetch_all(pool)
            .await?,
    )
}

/// A stored task.
#[derive(Debug, Clone, FromRow)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// Start.
    pub start_ts: DateTime<Utc>,
    /// End, if reported.
    pub end_ts: Option<DateTime<Utc>>,
    /// Services, sorted.
    pub services: Vec<String>,
}

/// Tasks, newest first, from `offset`, at most `limit`.
pub async fn list_tasks(
    pool: &PgPool,
    service: Option<&str>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    offset: i64,
    limit: i64,
) -> Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT id, start_ts, end_ts, services FROM tasks \
         WHERE ($1::text IS NULL OR $1 = ANY(services)) \
           AND ($2::timestamptz IS NULL OR start_ts >= $2) \
           AND ($3::timestamptz IS NULL OR start_ts < $3) \
         ORDER BY start_ts DESC, id OFFSET $4 LIMIT $5",
    )
    .bind(service)
    .bind(start)
    .bind(end)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One task by id.
pub async fn get_task(pool: &PgPool, id: &str) -> Result<Option<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT id, start_ts, end_ts, services FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Where earlier imports placed a trace: of the tasks whose id starts with
/// `prefix` (`bitbrains-`) and that ran any of `services` (all such tasks
/// when `services` is empty), each placement stamp in their ids (the
/// `YYYYMMDDTHHMMSSZ` part an importer writes), with its task count,
/// newest first.
pub async fn placements(
    pool: &PgPool,
    prefix: &str,
    services: &[String],
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT placed, count(*) FROM ( \
             SELECT substring(id from '-([0-9]{8}T[0-9]{6}Z)-') AS placed FROM tasks \
             WHERE starts_with(id, $1) \
               AND (cardinality($2::text[]) = 0 OR services && $2::text[]) \
         ) t WHERE placed IS NOT NULL GROUP BY placed ORDER BY placed DESC",
    )
    .bind(prefix)
    .bind(services)
    .fetch_all(pool)
    .await?)
}

/// Tasks by id.
pub async fn get_tasks(pool: &PgPool, ids: &[String]) -> Result<Vec<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT id, start_ts, end_ts, services FROM tasks WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// The key of a series.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct SeriesKey {
    /// Task id.
    pub task_id: String,
    /// Service id.
    pub service_id: i32,
    /// Resource id.
    pub resource_id: i32,
    /// Service name.
    pub service: String,
    /// Resource name.
    pub resource: String,
}

/// Series matching `filter`, in key order, after `after`, at most `limit`.
pub async fn list_series(
    pool: &PgPool,
    filter: &Filter,
    after: Option<(String, i32, i32)>,
    limit: i64,
) -> Result<Vec<SeriesKey>> {
    let (at, asvc, ares) = match after {
        Some((t, s, r)) => (Some(t), Some(s), Some(r)),
        None => (None, None, None),
    };
    Ok(sqlx::query_as(
        "SELECT x.task_id, x.service_id, x.resource_id, s.name AS service, r.name AS resource \
         FROM series x JOIN services s ON s.id = x.service_id JOIN resources r ON r.id = x.resource_id \
         WHERE ($1::int[] IS NULL OR x.service_id = ANY($1)) \
           AND ($2::int[] IS NULL OR x.resource_id = ANY($2)) \
           AND ($3::text[] IS NULL OR x.task_id = ANY($3)) \
           AND ($4::timestamptz IS NULL OR x.last_ts >= $4) \
           AND ($5::timestamptz IS NULL OR x.first_ts < $5) \
           AND ($6::text IS NULL OR (x.task_id, x.service_id, x.resource_id) > ($6, $7, $8)) \
         ORDER BY x.task_id, x.service_id, x.resource_id LIMIT $9",
    )
    .bind(&filter.service_ids)
    .bind(&filter.resource_ids)
    .bind(&filter.task_ids)
    .bind(filter.start)
    .bind(filter.end)
    .bind(at)
    .bind(asvc)
    .bind(ares)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// How a downsampled step combines its samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepAggregate {
    /// Mean.
    Mean,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Percentile as a fraction in (0, 1].
    Percentile(f64),
}

/// Points of one series: raw when `step_us` is `None`, else one per step.
/// At most `limit` points.
pub async fn series_points(
    pool: &PgPool,
    key: &SeriesKey,
    filter: &Filter,
    step: Option<(i64, StepAggregate)>,
    limit: i64,
) -> Result<Vec<(DateTime<Utc>, f64)>> {
    let base = "FROM samples WHERE task_id = $1 AND service_id = $2 AND resource_id = $3 \
                AND ($4::timestamptz IS NULL OR ts >= $4) AND ($5::timestamptz IS NULL OR ts < $5) \
                AND ($6::int[] IS NULL OR instance_id = ANY($6))";
    let query = match step {
        None => format!("SELECT ts, value {base} ORDER BY ts LIMIT $7"),
        Some((_, agg)) => {
            let expr = match agg {
                StepAggregate::Mean => "avg(value)",
                StepAggregate::Min => "min(value)",
                StepAggregate::Max => "max(value)",
                StepAggregate::Percentile(_) => "percentile_cont($9) WITHIN GROUP (ORDER BY value)",
            };
            format!(
                "SELECT date_bin($8::bigint * interval '1 microsecond', ts, timestamptz 'epoch') AS b, {expr} \
                 {base} GROUP BY b ORDER BY b LIMIT $7"
            )
        }
    };
    let mut q = sqlx::query_as::<_, (DateTime<Utc>, f64)>(&query)
        .bind(&key.task_id)
        .bind(key.service_id)
        .bind(key.resource_id)
        .bind(filter.start)
        .bind(filter.end)
        .bind(&filter.instance_ids)
        .bind(limit);
    if let Some((step_us, agg)) = step {
        q = q.bind(step_us);
        if let StepAggregate::Percentile(p) = agg {
            q = q.bind(p);
        }
    }
    Ok(q.fetch_all(pool).await?)
}

/// Summary statistics of one (service, resource) pair.
#[derive(Debug, Clone, FromRow)]
pub struct StatRow {
    /// Service name.
    pub service: String,
    /// Resource name.
    pub resource: String,
    /// Unit.
    pub unit: String,
    /// Samples.
    pub count: i64,
    /// Minimum.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Maximum.
    pub max: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// p50, p90, p95, p99 (linear interpolation between closest ranks).
    pub percentiles: Vec<f64>,
}

/// Statistics per (service, resource) over the filtered samples.
pub async fn usage_stats(pool: &PgPool, filter: &Filter) -> Result<Vec<StatRow>> {
    let query = format!(
        "SELECT s.name AS service, r.name AS resource, r.unit, count(*) AS count, \
                min(x.value) AS min, avg(x.value) AS mean, max(x.value) AS max, \
                coalesce(stddev_pop(x.value), 0) AS stddev, \
                percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY x.value) AS percentiles \
         FROM samples x JOIN services s ON s.id = x.service_id JOIN resources r ON r.id = x.resource_id \
         WHERE {SAMPLE_FILTER} \
         GROUP BY s.name, r.name, r.unit ORDER BY s.name, r.name"
    );
    Ok(bind_filter(sqlx::query_as(&query), filter)
        .fetch_all(pool)
        .await?)
}

/// The WHERE clause selecting `samples x` rows by a [`Filter`], with its
/// values in parameters $1 to $5 (see [`bind_filter`]).
const SAMPLE_FILTER: &str = "($1::int[] IS NULL OR x.service_id = ANY($1)) \
     AND ($2::int[] IS NULL OR x.resource_id = ANY($2)) \
     AND ($3::text[] IS NULL OR x.task_id = ANY($3)) \
     AND ($4::timestamptz IS NULL OR x.ts >= $4) \
     AND ($5::timestamptz IS NULL OR x.ts < $5) \
     AND ($6::int[] IS NULL OR x.instance_id = ANY($6))";

/// [`SAMPLE_FILTER`] for tables without instances (rollups pool them;
/// provisioned values are per service): $6 is bound but selects nothing.
pub(crate) fn pooled_filter(time_column: &str) -> String {
    SAMPLE_FILTER
        .replace("x.ts", time_column)
        .replace("x.instance_id = ANY($6)", "TRUE")
}

/// Binds a filter's values to $1 to $6 of a query using [`SAMPLE_FILTER`].
fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&filter.service_ids)
        .bind(&filter.resource_ids)
        .bind(&filter.task_ids)
        .bind(filter.start)
        .bind(filter.end)
        .bind(&filter.instance_ids)
}

/// A sample with its task's start, for exports.
#[derive(Debug, Clone, FromRow)]
pub struct ExportRow {
    /// Task id.
    pub task_id: String,
    /// Service id.
    pub service_id: i32,
    /// Resource id.
    pub resource_id: i32,
    /// Instance id (0, "default", for rollups and provisioned values).
    pub instance_id: i32,
    /// Value.
    pub value: f64,
    /// Time.
    pub ts: DateTime<Utc>,
    /// The task's start.
    pub start_ts: DateTime<Utc>,
}

/// Samples matching `filter` with their task's start, streamed in key
/// order (task, service, resource, time): exports and dumps.
pub fn export_rows<'a>(
    pool: &'a PgPool,
    filter: &'a Filter,
    query: &'a str,
) -> futures::stream::BoxStream<'a, Result<ExportRow, sqlx::Error>> {
    bind_filter(sqlx::query_as(query), filter).fetch(pool)
}

/// The statement behind [`export_rows`]: raw samples, or with a rollup
/// resolution one row per bucket (its mean, at the bucket's start).
pub fn export_query(rollup: Option<super::rollup::Resolution>) -> String {
    match rollup {
        None => format!(
            "SELECT x.task_id, x.service_id, x.resource_id, x.instance_id, x.value, x.ts, t.start_ts \
             FROM samples x JOIN tasks t ON t.id = x.task_id WHERE {SAMPLE_FILTER} \
             ORDER BY x.task_id, x.service_id, x.instance_id, x.resource_id, x.ts"
        ),
        Some(r) => format!(
            "SELECT x.task_id, x.service_id, x.resource_id, 0 AS instance_id, x.sum / x.count AS value, x.bucket AS ts, t.start_ts \
             FROM {} x JOIN tasks t ON t.id = x.task_id WHERE {} \
             ORDER BY x.task_id, x.service_id, x.resource_id, x.bucket",
            r.table(),
            pooled_filter("x.bucket")
        ),
    }
}

/// The statement behind [`export_rows`] for imported allocations (the
/// `provisioned` table), in the shape of raw samples.
pub fn export_provisioned_query() -> String {
    format!(
        "SELECT x.task_id, x.service_id, x.resource_id, 0 AS instance_id, x.value, x.ts, t.start_ts \
         FROM provisioned x JOIN tasks t ON t.id = x.task_id WHERE {} \
         ORDER BY x.task_id, x.service_id, x.resource_id, x.ts",
        pooled_filter("x.ts")
    )
}

/// Id-to-name maps of both lookup tables.
pub async fn names(pool: &PgPool) -> Result<(HashMap<i32, String>, HashMap<i32, String>)> {
    let services = list_services(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect();
    let resources = list_resources(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect();
    Ok((services, resources))
}

/// Id-to-name map of the instances.
pub async fn instance_names(pool: &PgPool) -> Result<HashMap<i32, String>> {
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, name FROM instances")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Whether the schema has been applied (the `samples` table exists), so a
/// reader can treat a fresh database as empty rather than failing.
pub async fn has_schema(pool: &PgPool) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('samples') IS NOT NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Number of stored samples of task `task_id`, of one service and one
/// resource (by name) where given. For checks (tests, the demo, reports):
/// it scans the task's samples.
pub async fn count_samples(
    pool: &PgPool,
    task_id: &str,
    service: Option<&str>,
    resource: Option<&str>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM samples x JOIN services s ON s.id = x.service_id \
         JOIN resources r ON r.id = x.resource_id \
         WHERE x.task_id = $1 AND ($2::text IS NULL OR s.name = $2) \
         AND ($3::text IS NULL OR r.name = $3)",
    )
    .bind(task_id)
    .bind(service)
    .bind(resource)
    .fetch_one(pool)
    .await?)
}
