//! What `headroom-collector admin` runs: the prototype's `read_data.py` as
//! subcommands: apply the schema, reset it (only with an explicit
//! confirmation), and dump a selection of samples as CSV.

use std::io::Write;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::{
    self as store,
    error::{Error, Result},
};

/// Applies the embedded migrations.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    store::migrate(pool).await
}

/// Writes the samples table's partitions (range, size on disk, rows) and
/// the oldest stored sample as an aligned table.
pub async fn storage(pool: &PgPool, out: &mut dyn Write) -> Result<()> {
    let partitions = store::lifecycle::partitions(pool).await?;
    let io = |e: std::io::Error| Error::Unavailable(format!("while writing the report: {e}"));
    writeln!(
        out,
        "{:<24} {:<25} {:<25} {:>12} {:>12}",
        "partition", "from", "to", "rows", "bytes"
    )
    .map_err(io)?;
    let (mut total_rows, mut total_bytes) = (0i64, 0i64);
    for p in &partitions {
        let (rows, bytes): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {0}), pg_total_relation_size('{0}')",
            p.name
        ))
        .fetch_one(pool)
        .await?;
        total_rows += rows;
        total_bytes += bytes;
        let bound = |t: Option<DateTime<Utc>>| t.map_or("(default)".into(), |t| t.to_rfc3339());
        writeln!(
            out,
            "{:<24} {:<25} {:<25} {:>12} {:>12}",
            p.name,
            bound(p.from),
            bound(p.to),
            rows,
            bytes
        )
        .map_err(io)?;
    }
    let oldest: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT min(ts) FROM samples")
        .fetch_one(pool)
        .await?;
    for table in ["rollup_1m", "rollup_1h"] {
        let (rows, bytes, first): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(&format!(
            "SELECT count(*), pg_total_relation_size('{table}'), min(bucket) FROM {table}"
        ))
        .fetch_one(pool)
        .await?;
        writeln!(
            out,
            "{table}: {rows} buckets, {bytes} bytes; oldest bucket: {}",
            first.map_or("none".into(), |t| t.to_rfc3339())
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "{} partitions, {total_rows} rows, {total_bytes} bytes; oldest raw sample: {}",
        partitions.len(),
        oldest.map_or("none".into(), |t| t.to_rfc3339())
    )
    .map_err(io)?;
    Ok(())
}

/// Drops every collector table and applies the schema again, empty.
/// Refuses unless `confirmed`.
pub async fn reset(pool: &PgPool, confirmed: bool) -> Result<()> {
    if !confirmed {
        return Err(Error::InvalidArgument(
            "reset deletes every stored sample, task and lookup; pass --confirm to do it".into(),
        ));
    }
    let mut tx = pool.begin().await?;
    for table in [
        "provisioned",
        "samples",
        "rollup_1m",
        "rollup_1h",
        "raw_horizon",
        "series",
        "tasks",
        "services",
        "resources",
        "_sqlx_migrations",
    ] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table} CASCADE"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    store::migrate(pool).await
}

/// Which samples `dump` writes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DumpSelection {
    /// Only these services (repeatable).
    #[arg(long = "service", env = "HEADROOM_DUMP_SERVICE")]
    pub services: Vec<String>,
    /// Only these resources (repeatable).
    #[arg(long = "resource", env = "HEADROOM_DUMP_RESOURCE")]
    pub resources: Vec<String>,
    /// Only these tasks (repeatable).
    #[arg(long = "task", env = "HEADROOM_DUMP_TASK")]
    pub tasks: Vec<String>,
    /// Inclusive start, RFC 3339.
    #[arg(long, env = "HEADROOM_DUMP_START")]
    pub start: Option<DateTime<Utc>>,
    /// Exclusive end, RFC 3339.
    #[arg(long, env = "HEADROOM_DUMP_END")]
    pub end: Option<DateTime<Utc>>,
}

/// Writes the selected samples as CSV with a header:
/// `task_id,service,resource,value,ts,seconds_into_task`. Returns the rows written.
pub async fn dump(pool: &PgPool, selection: &DumpSelection, out: &mut dyn Write) -> Result<u64> {
    let filter = store::resolve_filter(
        pool,
        &selection.services,
        &selection.resources,
        &selection.tasks,
        selection.start,
        selection.end,
    )
    .await?;
    let (services, resources) = store::names(pool).await?;
    let io = |e: std::io::Error| Error::Unavailable(format!("while writing the dump: {e}"));
    writeln!(out, "task_id,service,resource,value,ts,seconds_into_task").map_err(io)?;
    let query = store::export_query(None);
    let mut rows = store::export_rows(pool, &filter, &query);
    let mut n = 0;
    while let Some(r) = rows.try_next().await? {
        writeln!(
            out,
            "{},{},{},{},{},{}",
            csv_field(&r.task_id),
            csv_field(services.get(&r.service_id).map_or("", String::as_str)),
            resources.get(&r.resource_id).map_or("", String::as_str),
            r.value,
            r.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            (r.ts - r.start_ts).num_milliseconds() as f64 / 1000.0
        )
        .map_err(io)?;
        n += 1;
    }
    out.flush().map_err(io)?;
    Ok(n)
}

/// Quotes a CSV field when it needs it.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("web"), "web");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
