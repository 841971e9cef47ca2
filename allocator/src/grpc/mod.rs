//! The allocator's gRPC edge, the only code that names tonic or protobuf
//! types: the server, the upstream clients, the CLI's client, conversions.

pub mod backtest;
pub mod client;
pub mod convert;
pub mod service;
pub mod sources;
pub mod usage;

use headroom_proto::v1::allocator_server::AllocatorServer;
use headroom_serving::{
    grpc::{self, GrpcOptions},
    tls::ClientTls,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Channel};

use crate::{
    allocate::{Allocator, ServiceOptions},
    error::{Error, Result},
};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "headroom.v1.Allocator";

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    pub upstream_tls: ClientTls,
}

fn lazy(what: &'static str, url: &str, tls: &ClientTls) -> Result<Channel> {
    Ok(tls
        .endpoint(url)
        .map_err(|source| Error::Url {
            what,
            url: url.to_string(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy())
}

/// Runs the allocator on `listener` until `shutdown` is cancelled. The
/// upstreams are connected on first use, so it starts without them.
pub async fn run(
    listener: TcpListener,
    shutdown: CancellationToken,
    config: AllocatorConfig,
) -> Result<()> {
    let tls = &config.upstream_tls;
    let collector = sources::Collector::new(lazy("collector", &config.collector, tls)?);
    let predictor = sources::Predictor::new(lazy("predictor", &config.predictor, tls)?);
    let (health, health_service) = tonic_health::server::health_reporter();
    grpc::report_health(&health, SERVICE_NAME, true).await;
    let snapshot_every = config.service.snapshot_every;
    let allocator = Allocator::new(collector, predictor, config.service);
    if let Some(every) = snapshot_every {
        tokio::spawn(allocator.clone().keep_snapshot(every, shutdown.clone()));
    }
    let api = AllocatorServer::new(service::AllocatorApi::new(allocator))
        .max_decoding_message_size(config.grpc.max_message_bytes)
        .max_encoding_message_size(config.grpc.max_message_bytes);
    let routes = Routes::new(health_service).add_service(api);
    let served = grpc::serve(listener, routes, &[SERVICE_NAME], &config.grpc, shutdown).await;
    grpc::report_health(&health, SERVICE_NAME, false).await;
    Ok(served?)
}
