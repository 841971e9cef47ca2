//! `headroom-store`: the only code that speaks SQL. It owns Headroom's
//! PostgreSQL schema (embedded migrations), the write path (batches by
//! binary COPY, rollups, provisioned allocations), storage lifecycle
//! (partitions, retention), the queries the collector answers, the exports
//! training reads, and the admin commands (`storage`, `reset`, `dump`).
//!
//! Callers hold a [`PgPool`] (from [`lazy_pool`] or [`connect`]) and a
//! [`Lookups`] cache, and pass them to the functions here.

pub mod admin;
pub mod error;
pub mod lifecycle;
mod query;
pub mod rollup;
mod rows;
pub mod sketch;
mod write;

pub use error::{Error, Result};
pub use query::*;
pub use rows::{Row, TaskSeen};
pub use write::{Batch, Conflict, WritePath, WriteReport, write_batch, write_provisioned};

/// A pool of PostgreSQL connections, as every store function takes it.
pub use sqlx::PgPool;

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::postgres::PgPoolOptions;
use tokio::sync::RwLock;

/// Where the store is unless `--database-url` / `HEADROOM_DATABASE_URL`
/// says otherwise: the local stack's `headroom` database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/headroom";

/// The embedded migrations (`store/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How every pool of the store is sized: at most `max_connections`, and a
/// connection waited for at most 5 s.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
}

/// A pool that connects on first use, so the collector starts (and reports
/// NOT_SERVING) while the database is still down.
pub fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(pool_options(max_connections).connect_lazy(url)?)
}

/// A pool connected now: fails with the reason when the database does not
/// answer within 5 s (for commands that cannot do anything without it).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(pool_options(max_connections).connect(url).await?)
}

/// Whether the database answers now (`SELECT 1`), for readiness checks.
pub async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Applies the embedded migrations up to `version` only: a store as an
/// older release left it, for upgrade tests.
pub async fn migrate_up_to(pool: &PgPool, version: i64) -> Result<()> {
    let older = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older.run(pool).await?;
    Ok(())
}

/// Applies the embedded migrations.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Name-to-id maps of the lookup tables, filled as new names arrive. Ids are
/// stable: a name, once stored, keeps its id.
#[derive(Debug, Default)]
pub struct Lookups {
    services: RwLock<HashMap<String, i32>>,
    instances: RwLock<HashMap<String, i32>>,
    resources: RwLock<HashMap<String, i32>>,
}

/// The lookup tables names are inserted into as they arrive.
#[derive(Debug, Clone, Copy)]
enum Named {
    Services,
    Instances,
}

impl Lookups {
    /// A shared, empty cache.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Ids of `names` (services), inserting the ones not stored yet.
    pub async fn service_ids(&self, pool: &PgPool, names: &[&str]) -> Result<HashMap<String, i32>> {
        self.ids(pool, Named::Services, names).await
    }

    /// Ids of `names` (instances), inserting the ones not stored yet.
    pub async fn instance_ids(
        &self,
        pool: &PgPool,
        names: &[&str],
    ) -> Result<HashMap<String, i32>> {
        self.ids(pool, Named::Instances, names).await
    }

    async fn ids(
        &self,
        pool: &PgPool,
        table: Named,
        names: &[&str],
    ) -> Result<HashMap<String, i32>> {
        let (cache, insert) = match table {
            Named::Services => (
                &self.services,
                "INSERT INTO services (name) SELECT * FROM UNNEST($1::text[]) \
                 ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, name",
            ),
            Named::Instances => (
                &self.instances,
                "INSERT INTO instances (name) SELECT * FROM UNNEST($1::text[]) \
                 ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id, name",
            ),
        };
        let mut out = HashMap::with_capacity(names.len());
        let mut missing = Vec::new();
        {
            let cached = cache.read().await;
            for n in names {
                match cached.get(*n) {
                    Some(id) => {
                        out.insert((*n).to_string(), *id);
                    }
                    None => missing.push((*n).to_string()),
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            // DO UPDATE (a no-op) so RETURNING yields existing rows too.
            let rows: Vec<(i32, String)> = sqlx::query_as(insert)
                .bind(&missing)
                .fetch_all(pool)
                .await?;
            let mut cached = cache.write().await;
            for (id, name) in rows {
                cached.insert(name.clone(), id);
                out.insert(name, id);
            }
        }
        Ok(out)
    }

    /// Ids of every resource.
    pub async fn resource_ids(&self, pool: &PgPool) -> Result<HashMap<String, i32>> {
        {
            let cache = self.resources.read().await;
            if !cache.is_empty() {
                return Ok(cache.clone());
            }
        }
        let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, name FROM resources")
            .fetch_all(pool)
            .await?;
        let map: HashMap<String, i32> = rows.into_iter().map(|(id, n)| (n, id)).collect();
        *self.resources.write().await = map.clone();
        Ok(map)
    }

    /// Forgets every cached id (after `admin reset`).
    pub async fn clear(&self) {
        self.services.write().await.clear();
        self.instances.write().await.clear();
        self.resources.write().await.clear();
    }
}
