//! `headroom-collector`: consumes the usage topic into PostgreSQL (exactly
//! once in result) and answers queries, statistics, live streams and
//! exports over gRPC (`headroom.v1.Collector`).

mod api;
pub mod error;
pub mod import;
pub mod ingest;

use std::sync::Arc;

use headroom_proto::v1::collector_server::CollectorServer;
use headroom_serving::{
    grpc::{self, GrpcOptions},
    retry::{Retried, RetryPolicy, retry},
};
use headroom_store::{self as store, Lookups, PgPool, Row};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

pub use error::{Error, Result};
use ingest::IngestOptions;

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "headroom.v1.Collector";

/// Everything the collector needs to run. Its `Debug` hides the database
/// password and the Kafka option values.
#[derive(Clone)]
pub struct CollectorConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Largest connection pool.
    pub max_connections: u32,
    /// Kafka consumption; `None` serves queries only.
    pub ingest: Option<IngestOptions>,
    /// Partitioning and retention of raw samples.
    pub lifecycle: store::lifecycle::LifecycleOptions,
    /// Server limits.
    pub grpc: GrpcOptions,
}

impl std::fmt::Debug for CollectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorConfig")
            .field(
                "database_url",
                &headroom_serving::options::redact_url(&self.database_url),
            )
            .field("max_connections", &self.max_connections)
            .field("ingest", &self.ingest)
            .field("lifecycle", &self.lifecycle)
            .field("grpc", &self.grpc)
            .finish()
    }
}

/// State shared by the ingest path and the API.
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub pool: PgPool,
    /// Name-to-id caches.
    pub lookups: Arc<Lookups>,
    /// Samples as they are committed, for `StreamUsage`.
    pub live: broadcast::Sender<Arc<Vec<Row>>>,
    /// Cancelled at shutdown, so long-lived streams end and the server can
    /// drain.
    pub shutdown: CancellationToken,
    /// Most raw samples a statistics query sorts (see
    /// [`store::lifecycle::LifecycleOptions::raw_stats_limit`]).
    pub raw_stats_limit: u64,
    /// Rate-limited warnings about conflicting samples.
    pub conflict_log: ingest::ConflictLog,
    health: HealthReporter,
}

impl Shared {
    /// Readiness: SERVING when the collector can store and answer (its
    /// database answers), NOT_SERVING while it waits for it. Liveness (the
    /// server-wide entry) stays SERVING meanwhile.
    pub async fn set_ready(&self, ready: bool) {
        grpc::report_ready(&self.health, SERVICE_NAME, ready).await;
    }
}

/// Runs the collector on `listener` until `shutdown` is cancelled: the
/// schema is migrated (retrying while the database is down; health says
/// NOT_SERVING meanwhile), ingest runs, and the API answers.
pub async fn run(
    listener: TcpListener,
    shutdown: CancellationToken,
    config: CollectorConfig,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let pool = store::lazy_pool(&config.database_url, config.max_connections)?;
    let (live, _) = broadcast::channel(1024);
    let shared = Arc::new(Shared {
        pool,
        lookups: Lookups::new(),
        live,
        shutdown: shutdown.clone(),
        raw_stats_limit: config.lifecycle.raw_stats_limit,
        conflict_log: Default::default(),
        health,
    });
    shared.set_ready(false).await;

    // A configuration the background work refuses (bad Kafka settings)
    // stops the whole collector, with the reason.
    let background = tokio::spawn({
        let ready = start_when_ready(
            shared.clone(),
            config.ingest.clone(),
            config.lifecycle.clone(),
            shutdown.clone(),
        );
        let shutdown = shutdown.clone();
        async move {
            let result = ready.await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "collector stopping");
                shutdown.cancel();
            }
            result
        }
    });

    let api = CollectorServer::new(api::CollectorApi::new(shared.clone()))
        .max_decoding_message_size(config.grpc.max_message_bytes)
        .max_encoding_message_size(config.grpc.max_message_bytes);
    let routes = Routes::new(health_service).add_service(api);
    let served = grpc::serve(
        listener,
        routes,
        &[SERVICE_NAME],
        &config.grpc,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    grpc::report_health(&shared.health, SERVICE_NAME, false).await;
    match background.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "ingest task panicked"),
    }
    shared.pool.close().await;
    served?;
    Ok(())
}

/// Migrates once the database answers, then runs ingest.
async fn start_when_ready(
    shared: Arc<Shared>,
    ingest: Option<IngestOptions>,
    lifecycle: store::lifecycle::LifecycleOptions,
    shutdown: CancellationToken,
) -> Result<()> {
    lifecycle.validate()?;
    match retry(
        "schema migration (database not ready)",
        &RetryPolicy::DEFAULT,
        &shutdown,
        store::Error::is_connection,
        || store::migrate(&shared.pool),
    )
    .await
    {
        Retried::Done(()) => {}
        Retried::GaveUp(e) => return Err(e.into()),
        Retried::Cancelled => return Ok(()),
    }
    shared.set_ready(true).await;
    tracing::info!("schema ready");
    // Partitions exist before the first sample is written, and are kept
    // ahead of time (and expired) for as long as the collector runs.
    maintain_once(&shared.pool, &lifecycle).await;
    tokio::spawn(maintenance_loop(
        shared.pool.clone(),
        lifecycle,
        shutdown.clone(),
    ));
    tokio::spawn(readiness_loop(shared.clone(), shutdown.clone()));
    match ingest {
        Some(options) => ingest::run(options, shared, shutdown).await,
        None => Ok(()),
    }
}

/// How often readiness asks the database whether it answers.
pub const READINESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps readiness true to the database even when nothing is being
/// written (a query-only or idle collector): NOT_SERVING while it does not
/// answer, SERVING again once it does.
async fn readiness_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut ready = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(READINESS_EVERY) => {}
        }
        let now = match store::ping(&shared.pool).await {
            Ok(()) => true,
            Err(e) if e.is_connection() => false,
            // The database answered, if only with an error.
            Err(_) => true,
        };
        if now != ready {
            tracing::warn!(ready = now, "database reachability changed");
            shared.set_ready(now).await;
            ready = now;
        }
    }
}

/// One lifecycle maintenance pass. Failures are logged and retried at the
/// next pass; samples outside the prepared partitions still land in the
/// default one meanwhile.
async fn maintain_once(pool: &PgPool, options: &store::lifecycle::LifecycleOptions) {
    match store::lifecycle::maintain(pool, options, chrono::Utc::now()).await {
        Ok(report) => tracing::debug!(?report, "storage maintenance done"),
        Err(e) => tracing::warn!(error = %e, "storage maintenance failed"),
    }
}

/// Runs lifecycle maintenance every `maintenance_every` (the first pass
/// ran before ingest started).
async fn maintenance_loop(
    pool: PgPool,
    options: store::lifecycle::LifecycleOptions,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(options.maintenance_every) => {}
        }
        maintain_once(&pool, &options).await;
    }
}
