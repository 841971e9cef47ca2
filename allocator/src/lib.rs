//! `headroom-allocator`: how much each service should get. It answers
//! `headroom.v1.Allocator` (`Recommend`, `Plan`, `Place`) from the
//! collector's history and the predictor's quantile curves; see
//! [`strategy`] for the strategies and [`place`] for placement.

pub mod backtest;
pub mod place;
pub mod service;
pub mod sources;
pub mod strategy;

use headroom_proto::v1::allocator_server::AllocatorServer;
use headroom_serving::grpc::{self, GrpcOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use service::{AllocatorApi, ServiceOptions};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "headroom.v1.Allocator";

/// Everything the allocator needs to run.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// Collector URL, e.g. `http://127.0.0.1:50052`.
    pub collector: String,
    /// Predictor URL, e.g. `http://127.0.0.1:50053`.
    pub predictor: String,
    /// History window and limits.
    pub service: ServiceOptions,
    /// Server limits.
    pub grpc: GrpcOptions,
    /// TLS towards the collector and the predictor (for `https://` URLs).
    pub upstream_tls: headroom_serving::tls::ClientTls,
}

/// Why the allocator could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An upstream URL is malformed.
    #[error("bad {what} URL {url:?}: {source}")]
    Url {
        /// Which upstream.
        what: &'static str,
        /// The URL.
        url: String,
        /// Why.
        source: headroom_serving::tls::TlsError,
    },
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
}

fn lazy(
    what: &'static str,
    url: &str,
    tls: &headroom_serving::tls::ClientTls,
) -> Result<tonic::transport::Channel, Error> {
    Ok(tls
        .endpoint(url)
        .map_err(|source| Error::Url {
            what,
            url: url.to_string(),
            source,
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_lazy())
}

/// Runs the allocator on `listener` until `shutdown` is cancelled. The
/// upstreams are connected on first use, so it starts without them.
pub async fn run(
    listener: TcpListener,
    shutdown: CancellationToken,
    config: AllocatorConfig,
) -> Result<(), Error> {
    let collector =
        sources::Collector::new(lazy("collector", &config.collector, &config.upstream_tls)?);
    let predictor =
        sources::Predictor::new(lazy("predictor", &config.predictor, &config.upstream_tls)?);
    let (health, health_service) = tonic_health::server::health_reporter();
    grpc::report_health(&health, SERVICE_NAME, true).await;
    let snapshot_every = config.service.snapshot_every;
    let api = AllocatorApi::new(collector, predictor, config.service);
    if let Some(every) = snapshot_every {
        tokio::spawn(api.clone().keep_snapshot(every, shutdown.clone()));
    }
    let api = AllocatorServer::new(api)
        .max_decoding_message_size(config.grpc.max_message_bytes)
        .max_encoding_message_size(config.grpc.max_message_bytes);
    let routes = Routes::new(health_service).add_service(api);
    let served = grpc::serve(listener, routes, &config.grpc, shutdown).await;
    grpc::report_health(&health, SERVICE_NAME, false).await;
    Ok(served?)
}
