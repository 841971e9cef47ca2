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
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// Rows newly stored.
    pub inserted: u64,
    /// Rows that were already stored with the same value (exact replays:
    /// a redelivery, a producer's retry), now no-ops.
    pub duplicates: u64,
    /// Rows whose key (task, service, instance, resource, time) was already
    /// stored, or came twice in the batch, with a different value: not a
    /// replay but two sources claiming one sample. The stored value is
    /// kept; each is reported here.
    pub conflicts: Vec<Conflict>,
    /// The path taken.
    pub path: WritePath,
}

/// A sample whose key was taken by a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Task id.
    pub task_id: String,
    /// Service name.
    pub service: String,
    /// Instance name.
    pub instance: String,
    /// Resource name.
    pub resource: &'static str,
    /// Sample time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The value kept (stored first).
    pub kept: f64,
    /// The value refused.
    pub refused: f64,
}

/// A row with its ids resolved, in key order.
#[derive(Debug, Clone, Copy)]
struct Keyed<'a> {
    task_id: &'a str,
    service_id: i32,
    instance_id: i32,
    resource_id: i32,
    value: f64,
    ts_us: i64,
    /// Its index in the batch, for naming it in a conflict.
    row: usize,
}

impl Keyed<'_> {
    fn key(&self) -> (&str, i32, i32, i32, i64) {
        (
            self.task_id,
            self.service_id,
            self.instance_id,
            self.resource_id,
            self.ts_us,
        )
    }
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
    let mut names: Vec<&str> = batch.rows.iter().map(|r| r.instance.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let instances = lookups.instance_ids(pool, &names).await?;
    let resources = lookups.resource_ids(pool).await?;

    let mut rows: Vec<Keyed<'_>> = batch
        .rows
        .iter()
        .enumerate()
        .map(|(row, r)| Keyed {
            task_id: &r.task_id,
            service_id: services[&r.service],
            instance_id: instances[&r.instance],
            resource_id: resources[r.resource],
            value: r.value,
            ts_us: r.ts_us,
            row,
        })
        .collect();
    // Key order keeps index inserts local and lets duplicates inside the
    // batch (the same record twice in one poll) go before COPY sees them.
    // Stable, so the first of two equal keys is the one kept.
    rows.sort_by(|a, b| a.key().cmp(&b.key()));
    let conflict = |kept: &Keyed<'_>, refused: &Keyed<'_>| {
        let r = &batch.rows[refused.row];
        Conflict {
            task_id: r.task_id.clone(),
            service: r.service.clone(),
            instance: r.instance.clone(),
            resource: r.resource,
            ts_us: r.ts_us,
            kept: kept.value,
            refused: refused.value,
        }
    };
    let mut conflicts = Vec::new();
    let before = rows.len();
    rows.dedup_by(|later, first| {
        let same = later.key() == first.key();
        if same && later.value.to_bits() != first.value.to_bits() {
            conflicts.push(conflict(first, later));
        }
        same
    });
    let in_batch_duplicates = (before - rows.len()) as u64 - conflicts.len() as u64;

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
                conflicts,
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
                    .map(|(t, s, _, r, v, ts)| (t.as_str(), *s, *r, *v, *ts));
                fold_rollups(&mut tx, keyed).await?;
            }
            // Rows not inserted met a stored key: the same value is a
            // replay, another value a conflict.
            let fresh: std::collections::HashSet<(&str, i32, i32, i32, i64)> = stored
                .iter()
                .map(|(t, s, i, r, _, ts)| (t.as_str(), *s, *i, *r, *ts))
                .collect();
            let met: Vec<Keyed<'_>> = rows
                .iter()
                .filter(|r| !fresh.contains(&r.key()))
                .copied()
                .collect();
            let differing = stored_conflicts(&mut tx, &met).await?;
            let met_conflicts = differing.len() as u64;
            for (kept, refused) in differing {
                conflicts.push(conflict(&kept, &refused));
            }
            tx.commit().await?;
            Ok(WriteReport {
                inserted,
                duplicates: in_batch_duplicates + met.len() as u64 - met_conflicts,
                conflicts,
                path: WritePath::Dedup,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Of `met` (rows whose key is stored), those stored with another value,
/// each as (the stored row, the refused one).
async fn stored_conflicts<'a>(
    tx: &mut Transaction<'_, Postgres>,
    met: &[Keyed<'a>],
) -> Result<Vec<(Keyed<'a>, Keyed<'a>)>> {
    let mut out = Vec::new();
    for chunk in met.chunks(50_000) {
        let differing: Vec<(i32, f64)> = sqlx::query_as(
            "SELECT k.i, x.value FROM UNNEST($1::text[], $2::int[], $3::int[], $4::int[], $5::timestamptz[], $6::float8[], $7::int[]) \
               AS k(task_id, service_id, instance_id, resource_id, ts, value, i) \
             JOIN samples x USING (task_id, service_id, instance_id, resource_id, ts) \
             WHERE x.value IS DISTINCT FROM k.value",
        )
        .bind(chunk.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.service_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.instance_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.resource_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| to_time(r.ts_us)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.value).collect::<Vec<_>>())
        .bind((0..chunk.len() as i32).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for (i, stored) in differing {
            let refused = chunk[i as usize];
            let kept = Keyed {
                value: stored,
                ..refused
            };
            out.push((kept, refused));
        }
    }
    Ok(out)
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

    // Series pool instances: one extent per (task, service, resource).
    let series = extents(rows, |r| (r.task_id, r.service_id, r.resource_id));
    let (mut task_ids, mut service_ids, mut resource_ids, mut firsts, mut lasts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((t, s, r), (f, l)) in series {
        task_ids.push(t);
        service_ids.push(s);
        resource_ids.push(r);
        firsts.push(to_time(f));
        lasts.push(to_time(l));
    }
    // Instances of each service in each task, with their extent.
    let keys = extents(rows, |r| (r.task_id, r.service_id, r.instance_id));
    if !keys.is_empty() {
        sqlx::query(
            "INSERT INTO service_instances (task_id, service_id, instance_id, first_ts, last_ts) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::timestamptz[], $5::timestamptz[]) \
             ON CONFLICT (task_id, service_id, instance_id) DO UPDATE SET \
               first_ts = LEAST(service_instances.first_ts, EXCLUDED.first_ts), \
               last_ts = GREATEST(service_instances.last_ts, EXCLUDED.last_ts)",
        )
        .bind(keys.iter().map(|((t, _, _), _)| *t).collect::<Vec<_>>())
        .bind(keys.iter().map(|((_, s, _), _)| *s).collect::<Vec<_>>())
        .bind(keys.iter().map(|((_, _, i), _)| *i).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, (f, _))| to_time(*f)).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, (_, l))| to_time(*l)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
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

/// A task and two ids: a series (service, resource) or a replica
/// (service, instance).
type ExtentKey<'a> = (&'a str, i32, i32);

/// First and last time (µs) of the rows under each `key`, in key order.
fn extents<'a>(
    rows: &[Keyed<'a>],
    key: impl Fn(&Keyed<'a>) -> ExtentKey<'a>,
) -> Vec<(ExtentKey<'a>, (i64, i64))> {
    let mut out: HashMap<ExtentKey<'a>, (i64, i64)> = HashMap::new();
    for r in rows {
        let e = out.entry(key(r)).or_insert((r.ts_us, r.ts_us));
        e.0 = e.0.min(r.ts_us);
        e.1 = e.1.max(r.ts_us);
    }
    let mut out: Vec<_> = out.into_iter().collect();
    out.sort_unstable_by_key(|(k, _)| *k);
    out
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
            "COPY samples (task_id, service_id, instance_id, resource_id, value, ts) FROM STDIN (FORMAT binary)",
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
        buf.extend_from_slice(&6_i16.to_be_bytes());
        buf.extend_from_slice(&(r.task_id.len() as i32).to_be_bytes());
        buf.extend_from_slice(r.task_id.as_bytes());
        buf.extend_from_slice(&4_i32.to_be_bytes());
        buf.extend_from_slice(&r.service_id.to_be_bytes());
        buf.extend_from_slice(&4_i32.to_be_bytes());
        buf.extend_from_slice(&r.instance_id.to_be_bytes());
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

/// A row as `INSERT … RETURNING` gives it back: task, service, instance,
/// resource, value, time (µs).
type Stored = (String, i32, i32, i32, f64, i64);

/// The slow path: duplicates become no-ops. Returns the rows newly stored.
async fn insert_samples(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Keyed<'_>],
) -> Result<Vec<Stored>> {
    let mut inserted = Vec::new();
    for chunk in rows.chunks(50_000) {
        let stored: Vec<(String, i32, i32, i32, f64, DateTime<Utc>)> = sqlx::query_as(
            "INSERT INTO samples (task_id, service_id, instance_id, resource_id, value, ts) \
             SELECT * FROM UNNEST($1::text[], $2::int[], $6::int[], $3::int[], $4::float8[], $5::timestamptz[]) \
             ON CONFLICT DO NOTHING \
             RETURNING task_id, service_id, instance_id, resource_id, value, ts",
        )
        .bind(chunk.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.service_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.resource_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.value).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| to_time(r.ts_us)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.instance_id).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        inserted.extend(
            stored
                .into_iter()
                .map(|(t, s, i, r, v, ts)| (t, s, i, r, v, ts.timestamp_micros())),
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
