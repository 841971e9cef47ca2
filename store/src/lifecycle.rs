//! The lifecycle of raw samples on plain PostgreSQL: range partitions of
//! `samples` (one per `partition_width`, UTC-aligned) created ahead of
//! time; the default partition, where a sample outside every prepared range
//! lands, drained into proper partitions; and retention by dropping whole
//! partitions, never by deleting rows. Tasks and lookup tables are kept.
//! With TimescaleDB, retention drops chunks instead. Rollups have their own,
//! much longer, retention.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgPool, Row};

use crate::error::{Error, Result};

/// How raw samples are partitioned and how long they are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct LifecycleOptions {
    /// Width of one time partition of the samples table (a divisor of a
    /// day, or whole days).
    #[arg(long, env = "HEADROOM_PARTITION_WIDTH", default_value = "1d", value_parser = humantime::parse_duration)]
    pub partition_width: Duration,
    /// Partitions prepared ahead of the current one.
    #[arg(long, env = "HEADROOM_PARTITIONS_AHEAD", default_value_t = 3)]
    pub partitions_ahead: u32,
    /// How long raw samples are kept.
    #[arg(long, env = "HEADROOM_RAW_RETENTION", default_value = "8d", value_parser = humantime::parse_duration)]
    pub raw_retention: Duration,
    /// How long the per-minute and per-hour rollups are kept.
    #[arg(long, env = "HEADROOM_ROLLUP_RETENTION", default_value = "400d", value_parser = humantime::parse_duration)]
    pub rollup_retention: Duration,
    /// How often partitions are prepared, drained and expired.
    #[arg(long, env = "HEADROOM_MAINTENANCE_EVERY", default_value = "10m", value_parser = humantime::parse_duration)]
    pub maintenance_every: Duration,
    /// Most raw samples a statistics query sorts for exact percentiles;
    /// larger selections are answered from the per-minute rollups
    /// (percentiles within 1 %, the answer's resolution says MINUTE).
    /// 0 always reads raw samples where they cover the window.
    #[arg(long, env = "HEADROOM_RAW_STATS_LIMIT", default_value_t = 200_000)]
    pub raw_stats_limit: u64,
}

impl Default for LifecycleOptions {
    /// The defaults written in the `#[arg]` attributes above.
    fn default() -> Self {
        headroom_options::clap_defaults().expect("every LifecycleOptions field has a default")
    }
}

/// One partition of the samples table.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Table name.
    pub name: String,
    /// Inclusive lower bound; `None` for the default partition.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound; `None` for the default partition.
    pub to: Option<DateTime<Utc>>,
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MaintenanceReport {
    /// Partitions created.
    pub created: Vec<String>,
    /// Rows moved out of the default partition.
    pub drained_rows: u64,
    /// Partitions dropped by retention.
    pub dropped: Vec<String>,
    /// Rollup buckets removed by their retention.
    pub expired_buckets: u64,
}

impl LifecycleOptions {
    /// Refuses widths that do not tile days.
    pub fn validate(&self) -> Result<()> {
        let secs = self.partition_width.as_secs();
        if secs < 3600 || !(86_400u64.is_multiple_of(secs) || secs.is_multiple_of(86_400)) {
            return Err(Error::InvalidArgument(format!(
                "partition width {} must be at least an hour and divide a day or be whole days",
                humantime::format_duration(self.partition_width)
            )));
        }
        Ok(())
    }

    fn width(&self) -> TimeDelta {
        TimeDelta::seconds(self.partition_width.as_secs() as i64)
    }

    /// Start of the partition holding `ts`.
    pub fn window_start(&self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let width = self.partition_width.as_secs() as i64;
        let secs = ts.timestamp().div_euclid(width) * width;
        DateTime::from_timestamp(secs, 0).unwrap_or(ts)
    }
}

/// Name of the partition starting at `from`.
pub fn partition_name(from: DateTime<Utc>) -> String {
    format!("samples_p{}", from.format("%Y%m%d_%H%M"))
}

/// Whether TimescaleDB manages the samples table.
async fn timescale(pool: &PgPool) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
    )
    .fetch_one(pool)
    .await?)
}

/// The partitions of `samples`, oldest first, the default one last.
pub async fn partitions(pool: &PgPool) -> Result<Vec<Partition>> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, \
                (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz AS lo, \
                (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']*)''\\)'))[1]::timestamptz AS hi \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'samples'::regclass \
         ORDER BY lo NULLS LAST",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Partition {
            name: r.get("name"),
            from: r.get("lo"),
            to: r.get("hi"),
        })
        .collect())
}

/// Creates the partition for `[from, from + width)` unless it exists,
/// moving any rows of that range out of the default partition first.
async fn create_partition(
    pool: &PgPool,
    options: &LifecycleOptions,
    from: DateTime<Utc>,
) -> Result<Option<(String, u64)>> {
    let name = partition_name(from);
    let to = from + options.width();
    let mut tx = pool.begin().await?;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        return Ok(None);
    }
    // Holds ingest and readers off the table until the move and the attach
    // commit together: ingest must not add rows of this range to the default
    // partition between the move and the attach (which checks it), and a
    // reader must not plan with the old partitions but read after the move
    // (it would miss the moved rows). Moves are rare and small: late or
    // early samples only.
    sqlx::query("LOCK TABLE samples IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE {name} (LIKE samples INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    ))
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(&format!(
        "WITH moved AS (DELETE FROM samples_default WHERE ts >= $1 AND ts < $2 RETURNING *) \
         INSERT INTO {name} SELECT * FROM moved"
    ))
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(&format!(
        "ALTER TABLE samples ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
        from.to_rfc3339(),
        to.to_rfc3339()
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((name, moved)))
}

/// Records that raw samples before `since` are gone (never moves back).
async fn advance_horizon(pool: &PgPool, since: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO raw_horizon (since) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET since = greatest(raw_horizon.since, EXCLUDED.since)",
    )
    .bind(since)
    .execute(pool)
    .await?;
    Ok(())
}

/// One maintenance pass at time `now`: prepares the partitions from the
/// current one to `partitions_ahead` beyond it, drains the default
/// partition, and drops partitions wholly older than the retention period.
pub async fn maintain(
    pool: &PgPool,
    options: &LifecycleOptions,
    now: DateTime<Utc>,
) -> Result<MaintenanceReport> {
    options.validate()?;
    let mut report = MaintenanceReport::default();
    // Rollups are small (one row per series and minute or hour): row
    // deletes by the BRIN-indexed bucket are cheap enough.
    let rollup_cutoff = now - TimeDelta::seconds(options.rollup_retention.as_secs() as i64);
    for table in ["rollup_1m", "rollup_1h"] {
        report.expired_buckets += sqlx::query(&format!("DELETE FROM {table} WHERE bucket < $1"))
            .bind(rollup_cutoff)
            .execute(pool)
            .await?
            .rows_affected();
    }
    let cutoff = now - TimeDelta::seconds(options.raw_retention.as_secs() as i64);
    if timescale(pool).await? {
        sqlx::query("SELECT drop_chunks('samples', older_than => $1::timestamptz)")
            .bind(cutoff)
            .execute(pool)
            .await?;
        advance_horizon(pool, cutoff).await?;
        return Ok(report);
    }
    let mut starts: Vec<DateTime<Utc>> = (0..=options.partitions_ahead)
        .map(|i| options.window_start(now) + options.width() * i as i32)
        .collect();
    // Early and late samples: every window the default partition holds.
    let waiting: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT date_bin($1::interval, ts, 'epoch'::timestamptz) FROM samples_default",
    )
    .bind(format!("{} seconds", options.partition_width.as_secs()))
    .fetch_all(pool)
    .await?;
    starts.extend(
        waiting
            .into_iter()
            .filter(|s| *s + options.width() > cutoff),
    );
    starts.sort();
    starts.dedup();
    for from in starts {
        if let Some((name, moved)) = create_partition(pool, options, from).await? {
            tracing::info!(partition = %name, moved, "partition created");
            report.created.push(name);
            report.drained_rows += moved;
        }
    }
    // Default-partition rows already past retention go with the rest.
    let expired_default = sqlx::query("DELETE FROM samples_default WHERE ts < $1")
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    if expired_default > 0 {
        tracing::info!(
            rows = expired_default,
            "late samples past retention discarded"
        );
    }
    for p in partitions(pool).await? {
        if p.to.is_some_and(|to| to <= cutoff) {
            sqlx::query(&format!("DROP TABLE {}", p.name))
                .execute(pool)
                .await?;
            tracing::info!(partition = %p.name, "partition dropped by retention");
            report.dropped.push(p.name);
            if let Some(to) = p.to {
                advance_horizon(pool, to).await?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_utc_aligned_and_named_by_their_start() {
        let o = LifecycleOptions::default();
        let ts = DateTime::parse_from_rfc3339("2026-11-28T13:45:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let start = o.window_start(ts);
        assert_eq!(start.to_rfc3339(), "2026-11-28T00:00:00+00:00");
        assert_eq!(partition_name(start), "samples_p20261128_0000");
        let six_hours = LifecycleOptions {
            partition_width: Duration::from_secs(6 * 3600),
            ..o.clone()
        };
        assert_eq!(
            six_hours.window_start(ts).to_rfc3339(),
            "2026-11-28T12:00:00+00:00"
        );
    }

    #[test]
    fn widths_must_tile_days() {
        for (secs, ok) in [
            (86_400, true),
            (3600, true),
            (2 * 86_400, true),
            (1800, false),
            (7 * 3600, false),
        ] {
            let o = LifecycleOptions {
                partition_width: Duration::from_secs(secs),
                ..LifecycleOptions::default()
            };
            assert_eq!(o.validate().is_ok(), ok, "{secs}");
        }
    }
}
