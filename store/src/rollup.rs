//! Rollups: per-minute and per-hour aggregates of every series, folded into
//! `rollup_1m` / `rollup_1h` inside the transaction that stores the raw
//! samples, from exactly the rows that transaction inserted (a replayed
//! duplicate is never counted twice).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};

use super::sketch::Sketch;
use crate::error::Result;

/// A rollup table and its bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `rollup_1m`.
    Minute,
    /// `rollup_1h`.
    Hour,
}

impl Resolution {
    /// Both, finest first.
    pub const ALL: [Resolution; 2] = [Resolution::Minute, Resolution::Hour];

    /// The table.
    pub fn table(self) -> &'static str {
        match self {
            Resolution::Minute => "rollup_1m",
            Resolution::Hour => "rollup_1h",
        }
    }

    /// Bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Resolution::Minute => 60,
            Resolution::Hour => 3600,
        }
    }
}

/// Aggregates of one bucket of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Samples counted.
    pub count: i64,
    /// Their sum.
    pub sum: f64,
    /// The sum of their squares.
    pub sum_sq: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Their distribution.
    pub sketch: Sketch,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: Sketch::default(),
        }
    }

    /// Counts one value.
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.sum_sq += value * value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sketch.add(value);
    }

    /// Folds another aggregate of the same bucket (or a later one) in.
    pub fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }
}

/// (task, service, resource, bucket start in seconds).
pub type Key = (String, i32, i32, i64);

/// Aggregates rows `(task, service, resource, value, ts µs)` per bucket.
pub fn aggregate<'a>(
    rows: impl IntoIterator<Item = (&'a str, i32, i32, f64, i64)>,
    resolution: Resolution,
) -> HashMap<Key, Aggregate> {
    let width = resolution.seconds();
    let mut out: HashMap<Key, Aggregate> = HashMap::new();
    for (task, service, resource, value, ts_us) in rows {
        let bucket = ts_us.div_euclid(1_000_000).div_euclid(width) * width;
        out.entry((task.to_string(), service, resource, bucket))
            .or_default()
            .add(value);
    }
    out
}

/// Folds `fresh` into the stored buckets of `resolution`.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    resolution: Resolution,
    mut fresh: HashMap<Key, Aggregate>,
) -> Result<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let table = resolution.table();
    let tasks: Vec<&str> = fresh.keys().map(|k| k.0.as_str()).collect();
    let services: Vec<i32> = fresh.keys().map(|k| k.1).collect();
    let resources: Vec<i32> = fresh.keys().map(|k| k.2).collect();
    let buckets: Vec<DateTime<Utc>> = fresh
        .keys()
        .map(|k| DateTime::from_timestamp(k.3, 0).unwrap_or_default())
        .collect();
    // Stored buckets the batch touches, locked until commit.
    let stored = sqlx::query(&format!(
        "SELECT r.task_id, r.service_id, r.resource_id, r.bucket, r.count, r.sum, r.sum_sq, r.min, r.max, r.sketch \
         FROM {table} r JOIN UNNEST($1::text[], $2::int[], $3::int[], $4::timestamptz[]) \
              AS k(task_id, service_id, resource_id, bucket) \
           USING (task_id, service_id, resource_id, bucket) \
         FOR UPDATE OF r"
    ))
    .bind(&tasks)
    .bind(&services)
    .bind(&resources)
    .bind(&buckets)
    .fetch_all(&mut **tx)
    .await?;
    for row in stored {
        let bucket: DateTime<Utc> = row.get("bucket");
        let key: Key = (
            row.get("task_id"),
            row.get("service_id"),
            row.get("resource_id"),
            bucket.timestamp(),
        );
        let sketch = Sketch::decode(row.get::<&[u8], _>("sketch")).unwrap_or_else(|e| {
            tracing::error!(error = %e, ?key, "stored sketch unreadable; bucket restarts");
            Sketch::default()
        });
        let old = Aggregate {
            count: row.get("count"),
            sum: row.get("sum"),
            sum_sq: row.get("sum_sq"),
            min: row.get("min"),
            max: row.get("max"),
            sketch,
        };
        if let Some(agg) = fresh.get_mut(&key) {
            agg.merge(&old);
        }
    }
    write(tx, resolution, &fresh).await
}

/// [`write`] in a transaction of its own (imports of precomputed
/// aggregates, benchmarks that lay down history).
pub async fn write_buckets(
    pool: &sqlx::PgPool,
    resolution: Resolution,
    buckets: &HashMap<Key, Aggregate>,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    write(&mut tx, resolution, buckets).await?;
    tx.commit().await?;
    Ok(())
}

/// Stores buckets of `resolution` as they are, replacing stored ones.
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    resolution: Resolution,
    buckets: &HashMap<Key, Aggregate>,
) -> Result<()> {
    let table = resolution.table();
    let (mut t, mut s, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut count, mut sum, mut sum_sq, mut min, mut max, mut sketch) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (key, agg) in buckets {
        t.push(key.0.as_str());
        s.push(key.1);
        r.push(key.2);
        b.push(DateTime::from_timestamp(key.3, 0).unwrap_or_default());
        count.push(agg.count);
        sum.push(agg.sum);
        sum_sq.push(agg.sum_sq);
        min.push(agg.min);
        max.push(agg.max);
        sketch.push(agg.sketch.encode());
    }
    sqlx::query(&format!(
        "INSERT INTO {table} (task_id, service_id, resource_id, bucket, count, sum, sum_sq, min, max, sketch) \
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::timestamptz[], \
                              $5::int8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::bytea[]) \
         ON CONFLICT (task_id, service_id, resource_id, bucket) DO UPDATE SET \
           count = EXCLUDED.count, sum = EXCLUDED.sum, sum_sq = EXCLUDED.sum_sq, min = EXCLUDED.min, \
           max = EXCLUDED.max, sketch = EXCLUDED.sketch"
    ))
    .bind(&t)
    .bind(&s)
    .bind(&r)
    .bind(&b)
    .bind(&count)
    .bind(&sum)
    .bind(&sum_sq)
    .bind(&min)
    .bind(&max)
    .bind(&sketch)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_fall_in_utc_aligned_buckets() {
        let rows = [
            ("t", 1, 1, 1.0, 120_000_000),
            ("t", 1, 1, 3.0, 179_999_999),
            ("t", 1, 1, 5.0, 180_000_000),
            ("t", 1, 2, 7.0, 150_000_000),
        ];
        let minutes = aggregate(rows, Resolution::Minute);
        assert_eq!(minutes.len(), 3);
        let first = &minutes[&("t".to_string(), 1, 1, 120)];
        assert_eq!(
            (first.count, first.sum, first.min, first.max),
            (2, 4.0, 1.0, 3.0)
        );
        let hours = aggregate(rows, Resolution::Hour);
        assert_eq!(hours[&("t".to_string(), 1, 1, 0)].count, 3);
    }
}

/// Time before which retention removed raw samples; `None` while it has
/// removed nothing.
pub async fn raw_horizon(pool: &sqlx::PgPool) -> Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT since FROM raw_horizon")
        .fetch_optional(pool)
        .await?)
}

/// Which resolution answers statistics over `[start, end)`: raw samples
/// while they cover the window and it spans at most two days; per-minute
/// rollups up to a week; per-hour beyond.
pub fn for_stats(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    horizon: Option<DateTime<Utc>>,
) -> Option<Resolution> {
    let span = end - start;
    let raw_gone = horizon.is_some_and(|h| start < h);
    if !raw_gone && span <= chrono::TimeDelta::days(2) {
        None
    } else if span <= chrono::TimeDelta::days(7) {
        Some(Resolution::Minute)
    } else {
        Some(Resolution::Hour)
    }
}

/// Which rollup answers a downsampled query with `step_us`: the coarsest
/// whose buckets tile the step; raw samples otherwise.
pub fn for_step(step_us: i64) -> Option<Resolution> {
    Resolution::ALL
        .into_iter()
        .rev()
        .find(|r| step_us % (r.seconds() * 1_000_000) == 0)
}

/// The WHERE clause selecting rollup buckets `x` of a filter's series that
/// overlap its window: services, resources and tasks in $1 to $3, the
/// window in $4 and $5, the bucket width in seconds in $6.
const BUCKET_FILTER: &str = "($1::int[] IS NULL OR x.service_id = ANY($1)) \
     AND ($2::int[] IS NULL OR x.resource_id = ANY($2)) \
     AND ($3::text[] IS NULL OR x.task_id = ANY($3)) \
     AND ($4::timestamptz IS NULL OR x.bucket > $4 - make_interval(secs => $6)) \
     AND ($5::timestamptz IS NULL OR x.bucket < $5)";

/// Stored buckets of the filtered series overlapping the filter's window,
/// with service, resource and unit names, in (service, resource, bucket)
/// order.
pub async fn buckets(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
    resolution: Resolution,
) -> Result<Vec<(String, String, String, String, DateTime<Utc>, Aggregate)>> {
    let table = resolution.table();
    let rows = sqlx::query(&format!(
        "SELECT x.task_id, s.name AS service, r.name AS resource, r.unit, x.bucket, \
                x.count, x.sum, x.sum_sq, x.min, x.max, x.sketch \
         FROM {table} x JOIN services s ON s.id = x.service_id JOIN resources r ON r.id = x.resource_id \
         WHERE {BUCKET_FILTER} \
         ORDER BY s.name, r.name, x.bucket"
    ))
    .bind(&filter.service_ids)
    .bind(&filter.resource_ids)
    .bind(&filter.task_ids)
    .bind(filter.start)
    .bind(filter.end)
    .bind(resolution.seconds() as f64)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let sketch = Sketch::decode(row.get::<&[u8], _>("sketch"))
                .map_err(|e| crate::Error::Unavailable(format!("stored sketch unreadable: {e}")))?;
            Ok((
                row.get("task_id"),
                row.get("service"),
                row.get("resource"),
                row.get("unit"),
                row.get("bucket"),
                Aggregate {
                    count: row.get("count"),
                    sum: row.get("sum"),
                    sum_sq: row.get("sum_sq"),
                    min: row.get("min"),
                    max: row.get("max"),
                    sketch,
                },
            ))
        })
        .collect()
}

/// Statistics per (service, resource) from rollups: count, min, max and
/// mean exact (over whole buckets), standard deviation from the sums,
/// percentiles from the merged sketches (within 1 %, lower rank).
pub async fn stats(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
    resolution: Resolution,
) -> Result<Vec<super::StatRow>> {
    let mut out: Vec<super::StatRow> = Vec::new();
    let mut current: Option<(String, String, String, Aggregate)> = None;
    let finish = |(service, resource, unit, agg): (String, String, String, Aggregate)| {
        let n = agg.count as f64;
        let mean = agg.sum / n;
        super::StatRow {
            service,
            resource,
            unit,
            count: agg.count,
            min: agg.min,
            mean,
            max: agg.max,
            stddev: (agg.sum_sq / n - mean * mean).max(0.0).sqrt(),
            percentiles: [0.5, 0.9, 0.95, 0.99]
                .iter()
                .map(|q| agg.sketch.quantile(*q).unwrap_or_default())
                .collect(),
        }
    };
    for (_, service, resource, unit, _, agg) in buckets(pool, filter, resolution).await? {
        match &mut current {
            Some((s, r, _, total)) if *s == service && *r == resource => total.merge(&agg),
            _ => {
                if let Some(done) = current.take() {
                    out.push(finish(done));
                }
                current = Some((service, resource, unit, agg));
            }
        }
    }
    if let Some(done) = current {
        out.push(finish(done));
    }
    Ok(out)
}

/// Points of one series at `step_us` from rollups, one per step.
pub async fn points(
    pool: &sqlx::PgPool,
    key: &super::SeriesKey,
    filter: &super::Filter,
    step_us: i64,
    aggregate: super::StepAggregate,
    resolution: Resolution,
    limit: usize,
) -> Result<Vec<(DateTime<Utc>, f64)>> {
    let one = super::Filter {
        service_ids: Some(vec![key.service_id]),
        resource_ids: Some(vec![key.resource_id]),
        task_ids: Some(vec![key.task_id.clone()]),
        instance_ids: None,
        start: filter.start,
        end: filter.end,
    };
    let step_s = step_us / 1_000_000;
    let mut steps: Vec<(i64, Aggregate)> = Vec::new();
    for (_, _, _, _, bucket, agg) in buckets(pool, &one, resolution).await? {
        let at = bucket.timestamp().div_euclid(step_s) * step_s;
        match steps.last_mut() {
            Some((t, total)) if *t == at => total.merge(&agg),
            _ => {
                if steps.len() == limit {
                    break;
                }
                steps.push((at, agg));
            }
        }
    }
    Ok(steps
        .into_iter()
        .map(|(t, agg)| {
            let value = match aggregate {
                super::StepAggregate::Mean => agg.sum / agg.count as f64,
                super::StepAggregate::Min => agg.min,
                super::StepAggregate::Max => agg.max,
                super::StepAggregate::Percentile(q) => agg.sketch.quantile(q).unwrap_or_default(),
            };
            (DateTime::from_timestamp(t, 0).unwrap_or_default(), value)
        })
        .collect())
}

#[cfg(test)]
mod choice_tests {
    use super::*;

    fn day(d: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_006_400 + d * 86_400, 0).unwrap()
    }

    #[test]
    fn raw_answers_short_windows_it_covers_and_rollups_the_rest() {
        assert_eq!(for_stats(day(5), day(6), None), None);
        assert_eq!(for_stats(day(5), day(6), Some(day(1))), None);
        assert_eq!(
            for_stats(day(0), day(1), Some(day(1))),
            Some(Resolution::Minute),
            "raw samples are gone"
        );
        assert_eq!(for_stats(day(0), day(5), None), Some(Resolution::Minute));
        assert_eq!(for_stats(day(0), day(30), None), Some(Resolution::Hour));
    }

    #[test]
    fn steps_read_the_coarsest_rollup_that_tiles_them() {
        assert_eq!(for_step(7_200_000_000), Some(Resolution::Hour));
        assert_eq!(for_step(300_000_000), Some(Resolution::Minute));
        assert_eq!(for_step(90_000_000), None);
        assert_eq!(for_step(1_000_000), None);
    }
}

/// The window a filter covers: its own bounds, or where open, the extent
/// of the series it selects. `None` when it selects nothing.
async fn window_of(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>> {
    let (first, last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT min(first_ts), max(last_ts) FROM series x \
         WHERE ($1::int[] IS NULL OR x.service_id = ANY($1)) \
           AND ($2::int[] IS NULL OR x.resource_id = ANY($2)) \
           AND ($3::text[] IS NULL OR x.task_id = ANY($3))",
    )
    .bind(&filter.service_ids)
    .bind(&filter.resource_ids)
    .bind(&filter.task_ids)
    .fetch_one(pool)
    .await?;
    Ok(filter.start.or(first).zip(filter.end.or(last)))
}

/// The resolution that answers statistics for `filter`: by its window
/// (see [`for_stats`]), and from the per-minute rollups when the raw
/// samples it selects number more than `raw_limit` (0: no limit), since
/// exact percentiles sort every one of them.
pub async fn choose_for_stats(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
    raw_limit: u64,
) -> Result<Option<Resolution>> {
    // Rollups pool instances: a question about some of them reads raw.
    if filter.instance_ids.is_some() {
        return Ok(None);
    }
    let Some((start, end)) = window_of(pool, filter).await? else {
        return Ok(None);
    };
    let by_window = for_stats(start, end, raw_horizon(pool).await?);
    if by_window.is_none() && raw_limit > 0 && raw_samples_exceed(pool, filter, raw_limit).await? {
        return Ok(Some(Resolution::Minute));
    }
    Ok(by_window)
}

/// Whether `filter` selects more than `limit` samples, counted from the
/// per-minute buckets. At most `limit + 1` buckets are read: each holds at
/// least one sample, so reaching that many settles it.
async fn raw_samples_exceed(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
    limit: u64,
) -> Result<bool> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
    let samples: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(count), 0)::bigint FROM ( \
           SELECT x.count FROM rollup_1m x WHERE {BUCKET_FILTER} LIMIT $7) b"
    ))
    .bind(&filter.service_ids)
    .bind(&filter.resource_ids)
    .bind(&filter.task_ids)
    .bind(filter.start)
    .bind(filter.end)
    .bind(Resolution::Minute.seconds() as f64)
    .bind(limit + 1)
    .fetch_one(pool)
    .await?;
    Ok(samples > limit)
}

/// The resolution of an export (training data): raw samples while they
/// cover the window, else the per-minute rollups.
pub async fn choose_for_export(
    pool: &sqlx::PgPool,
    filter: &super::Filter,
) -> Result<Option<Resolution>> {
    if filter.instance_ids.is_some() {
        return Ok(None);
    }
    let Some((start, _)) = window_of(pool, filter).await? else {
        return Ok(None);
    };
    let horizon = raw_horizon(pool).await?;
    Ok(horizon
        .is_some_and(|h| start < h)
        .then_some(Resolution::Minute))
}
