//! Writes one batch in one transaction: tasks, series extents and samples.
//! Samples go in by binary COPY (the fastest path PostgreSQL has); a batch
//! that meets rows already stored (a replay after a crash, a producer's
//! duplicate) is redone with `INSERT … ON CONFLICT DO NOTHING`, so the
//! natural key turns every duplicate into a no-op. The rollups are folded
//! in the same transaction, from exactly the rows it inserted.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::{
    Lookups, Row, TaskSeen,
    error::Result,
    rollup::{self, Resolution},
};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Rows and task facts gathered from a run of records.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Samples to store.
    pub rows: Vec<Row>,
    /// Task facts, merged per task id.
    pub tasks: HashMap<String, TaskSeen>,
}

impl Batch {
    /// Adds rows and their task.
    pub fn push_usage(&mut self, rows: Vec<Row>, task: TaskSeen) {
        self.rows.extend(rows);
        self.merge_task(task);
    }

    /// Merges a task fact: earliest start, latest end, union of services.
    pub fn merge_task(&mut self, task: TaskSeen) {
        match self.tasks.get_mut(&task.id) {
            Some(t) => {
                t.start_us = t.start_us.min(task.start_us);
                t.end_us = t.end_us.max(task.end_us);
                for s in task.services {
                    if !t.services.contains(&s) {
                        t.services.push(s);
                    }
                }
            }
            None => {
                self.tasks.insert(task.id.clone(), task);
            }
        }
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tasks.is_empty()
    }
}

/// Which path stored the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// Binary COPY: no row of the batch was stored before.
    Copy,
    /// INSERT … ON CONFLICT DO NOTHING after COPY met a stored row.
    Dedup,
}

/// What a write did.
#[derive(Debug, Clone, Copy)]
pub struct WriteReport {
    /// Rows newly stored.
    pub inserted: u64,
    /// Rows that were already stored (duplicates).
    pub duplicates: u64,
    /// The path taken.
    pub path: WritePath,
}

/// A row with its ids resolved, in key order.
#[derive(Debug, Clone, Copy)]
struct Keyed<'a> {
    task_id: &'a str,
    service_id: i32,
    resource_id: i32,
    value: f64,
    ts_us: i64,
}

/// Folds inserted rows into both rollup tables.
async fn fold_rollups<'a>(
    tx: &mut Transaction<'_, Postgres>,
    rows: impl Iterator<Item = (&'a str, i32, i32, f64, i64)> + Clone,
) -> Result<()> {
    for resolution in Resolution::ALL {
        rollup::apply(tx, resolution, rollup::aggregate(rows.clone(), resolution)).await?;
    }
    Ok(())
}

/// Stores a batch: everything or nothing. With `rollups`, the per-minute
/// and per-hour aggregates are updated in the same transaction.
pub async fn write_batch(
    pool: &PgPool,
    lookups: &Lookups,
    batch: &Batch,
    rollups: bool,
) -> Result<WriteReport> {
    let mut names: Vec<&str> = batch.rows.iter().map(|r| r.service.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let services = lookups.service_ids(pool, &names).await?;
    let resources = lookups.resource_ids(pool).await?;

    let mut rows: Vec<Keyed<'_>> = batch
        .rows
        .iter()
        .map(|r| Keyed {
            task_id: &r.task_id,
            service_id: services[&r.service],
            resource_id: resources[r.resource],
            value: r.value,
            ts_us: r.ts_us,
        })
        .collect();
    // Key order keeps index inserts local and lets duplicates inside the
    // batch (the same record twice in one poll) go before COPY sees them.
    rows.sort_unstable_by(|a, b| {
        (a.task_id, a.service_id, a.resource_id, a.ts_us).cmp(&(
            b.task_id,
            b.service_id,
            b.resource_id,
            b.ts_us,
        ))
    });
    let before = rows.len();
    rows.dedup_by(|a, b| {
        (a.task_id, a.service_id, a.resource_id, a.ts_us)
            == (b.task_id, b.service_id, b.resource_id, b.ts_us)
    });
    let in_batch_duplicates = (before - rows.len()) as u64;

    let mut tx = pool.begin().await?;
    write_context(&mut tx, batch, &rows).await?;
    match copy_samples(&mut tx, &rows).await {
        Ok(()) => {
            if rollups {
                let keyed = rows
                    .iter()
                    .map(|r| (r.task_id, r.service_id, r.resource_id, r.value, r.ts_us));
                fold_rollups(&mut tx, keyed).await?;
            }
            tx.commit().await?;
            Ok(WriteReport {
                inserted: rows.len() as u64,
                duplicates: in_batch_duplicates,
                path: WritePath::Copy,
            })
        }
        Err(e) if is_unique_violation(&e) => {
            tx.rollback().await?;
            let mut tx = pool.begin().await?;
            write_context(&mut tx, batch, &rows).await?;
            let stored = insert_samples(&mut tx, &rows).await?;
            let inserted = stored.len() as u64;
            if rollups {
                let keyed = stored
                    .iter()
                    .map(|(t, s, r, v, ts)| (t.as_str(), *s, *r, *v, *ts));
                fold_rollups(&mut tx, keyed).await?;
            }
            tx.commit().await?;
            Ok(WriteReport {
                inserted,
                duplicates: in_batch_duplicates + rows.len() as u64 - inserted,
                path: WritePath::Dedup,
            })
        }
        Err(e) => Err(e.into()),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Tasks and series extents of the batch.
async fn write_context(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
    rows: &[Keyed<'_>],
) -> Result<()> {
    let mut task_ids: Vec<&String> = batch.tasks.keys().collect();
    task_ids.sort();
    for id in task_ids {
        let t = &batch.tasks[id];
        let services: Vec<String> = t
            .services
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        sqlx::query(
            "INSERT INTO tasks (id, start_ts, end_ts, services) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET \
               start_ts = LEAST(tasks.start_ts, EXCLUDED.start_ts), \
               end_ts = COALESCE(GREATEST(tasks.end_ts, EXCLUDED.end_ts), tasks.end_ts, EXCLUDED.end_ts), \
               services = ARRAY(SELECT DISTINCT s FROM unnest(tasks.services || EXCLUDED.services) AS s ORDER BY s)",
        )
        .bind(&t.id)
        .bind(to_time(t.start_us))
        .bind(t.end_us.map(to_time))
        .bind(&services)
        .execute(&mut **tx)
        .await?;
    }

    // Rows are in key order, so each series is one run.
    let (mut task_ids, mut service_ids, mut resource_ids, mut firsts, mut lasts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in rows.chunk_by(|a, b| {
        (a.task_id, a.service_id, a.resource_id) == (b.task_id, b.service_id, b.resource_id)
    }) {
        task_ids.push(run[0].task_id);
        service_ids.push(run[0].service_id);
        resource_ids.push(run[0].resource_id);
        firsts.push(to_time(run[0].ts_us));
        lasts.push(to_time(run[run.len() - 1].ts_us));
    }
    if !task_ids.is_empty() {
        sqlx::query(
            "INSERT INTO series (task_id, service_id, resource_id, first_ts, last_ts) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[]) \
             ON CONFLICT (task_id, service_id, resource_id) DO UPDATE SET \
               first_ts = LEAST(series.first_ts, EXCLUDED.first_ts), \
               last_ts = GREATEST(series.last_ts, EXCLUDED.last_ts)",
        )
        .bind(&task_ids)
        .bind(&service_ids)
        .bind(&resource_ids)
        .bind(&firsts)
        .bind(&lasts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Binary COPY of the samples.
async fn copy_samples(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Keyed<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut copy = tx
        .copy_in_raw(
            "COPY samples (task_id, service_id, resource_id, value, ts) FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(encode_binary_copy(rows)).await?;
    copy.finish().await?;
    Ok(())
}

/// PostgreSQL's binary COPY format: header, one tuple per row, trailer.
fn encode_binary_copy(rows: &[Keyed<'_>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(19 + rows.len() * 64 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0_i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0_i32.to_be_bytes()); // header extension length
    for r in rows {
        buf.extend_from_slice(&5_i16.to_be_bytes());
        buf.extend_from_slice(&(r.task_id.len() as i32).to_be_bytes());
        buf.extend_from_slice(r.task_id.as_bytes());
        buf.extend_from_slice(&4_i32.to_be_bytes());
        buf.extend_from_slice(&r.service_id.to_be_bytes());
        buf.extend_from_slice(&4_i32.to_be_bytes());
        buf.extend_from_slice(&r.resource_id.to_be_bytes());
        buf.extend_from_slice(&8_i32.to_be_bytes());
        buf.extend_from_slice(&r.value.to_bits().to_be_bytes());
        buf.extend_from_slice(&8_i32.to_be_bytes());
        buf.extend_from_slice(&(r.ts_us - PG_EPOCH_US).to_be_bytes());
    }
    buf.extend_from_slice(&(-1_i16).to_be_bytes());
    buf
}

/// A row as `INSERT … RETURNING` gives it back.
type Stored = (String, i32, i32, f64, i64);

/// The slow path: duplicates become no-ops. Returns the rows newly stored.
async fn insert_samples(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Keyed<'_>],
) -> Result<Vec<Stored>> {
    let mut inserted = Vec::new();
    for chunk in rows.chunks(50_000) {
        let stored: Vec<(String, i32, i32, f64, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO samples (task_id, service_id, resource_id, value, ts) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::float8[], $5::timestamptz[]) \
             ON CONFLICT DO NOTHING \
             RETURNING task_id, service_id, resource_id, value, ts",
        )
        .bind(chunk.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.service_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.resource_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.value).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| to_time(r.ts_us)).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        inserted.extend(
            stored
                .into_iter()
                .map(|(t, s, r, v, ts)| (t, s, r, v, ts.timestamp_micros())),
        );
    }
    Ok(inserted)
}

/// Stores imported allocations (`provisioned`): one value per (task,
/// service, resource, time); a value already stored is kept. The tasks
/// must exist (write their usage first). Returns the rows newly stored.
pub async fn write_provisioned(pool: &PgPool, lookups: &Lookups, rows: &[Row]) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut names: Vec<&str> = rows.iter().map(|r| r.service.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let services = lookups.service_ids(pool, &names).await?;
    let resources = lookups.resource_ids(pool).await?;
    let mut task = Vec::with_capacity(rows.len());
    let mut service = Vec::with_capacity(rows.len());
    let mut resource = Vec::with_capacity(rows.len());
    let mut value = Vec::with_capacity(rows.len());
    let mut ts = Vec::with_capacity(rows.len());
    for r in rows {
        task.push(r.task_id.clone());
        service.push(services[&r.service]);
        resource.push(resources[r.resource]);
        value.push(r.value);
        ts.push(
            chrono::DateTime::from_timestamp_micros(r.ts_us).ok_or_else(|| {
                crate::Error::InvalidArgument(format!("timestamp {} µs is out of range", r.ts_us))
            })?,
        );
    }
    let done = sqlx::query(
        "INSERT INTO provisioned (task_id, service_id, resource_id, value, ts) \
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::float8[], $5::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&task)
    .bind(&service)
    .bind(&resource)
    .bind(&value)
    .bind(&ts)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
