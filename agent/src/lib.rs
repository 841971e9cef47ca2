//! `headroom-agent`: samples each watched service's own CPU, memory, disk
//! and network IO (process trees through sysinfo, containers through cgroup
//! v1 or v2, with OOM kills, CPU throttling and limits) and publishes
//! protobuf samples to Kafka, one series per service instance, through
//! outages.

pub mod config;
pub mod delivery;
pub mod sampling;
pub mod targets;
mod watch;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use headroom_proto::v1::agent_server::AgentServer;
use headroom_serving::grpc::{self, GrpcOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub use delivery::{PublishError, Publisher, PublisherOptions};
pub use sampling::{Discovery, DiscoveryError};
pub use targets::{SpecError, TargetSpec};
pub use watch::LAYOUT_HEADER;

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "headroom.v1.Agent";

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Host name samples are published under.
    pub host: String,
    /// Sampling interval.
    pub interval: Duration,
    /// Targets watched from the start.
    pub targets: Vec<TargetSpec>,
    /// Container discovery under a cgroup root, rescanned at the period.
    pub discovery: Option<(Discovery, Duration)>,
    /// A task started with the agent: its id (generated when empty) and
    /// services.
    pub task: Option<(String, Vec<String>)>,
    /// Delivery to Kafka.
    pub publisher: PublisherOptions,
    /// Server limits.
    pub grpc: GrpcOptions,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Delivery could not start.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] grpc::ServeError),
    /// The task given at start was refused.
    #[error("task at start: {0}")]
    Task(String),
}

/// Runs the agent until `shutdown`: samples, publishes, serves the API;
/// then stops sampling, flushes what the broker takes and spools the rest.
pub async fn run(
    listener: TcpListener,
    shutdown: CancellationToken,
    config: AgentConfig,
) -> Result<(), Error> {
    let publisher = Publisher::new(config.publisher.clone())?;
    let layout = sampling::cgroup::Layout::host();
    tracing::info!(cgroup = layout.name(), layout = ?layout, "cgroup layout detected");
    let mut state = watch::State::new(
        config.host.clone(),
        config.interval,
        config.publisher.topic.clone(),
        config.targets.clone(),
        config.discovery.clone(),
    );
    if let Some((id, services)) = config.task.clone() {
        let task = state
            .start_task(id, services, None)
            .map_err(|e| Error::Task(e.message().to_string()))?;
        let (key, payload) = state.task_record(&task);
        publisher.publish(&key, payload);
    }
    let state = Arc::new(Mutex::new(state));
    let (health, health_service) = tonic_health::server::health_reporter();
    headroom_serving::grpc::report_health(&health, SERVICE_NAME, true).await;

    let sampling_stop = CancellationToken::new();
    let sampler = tokio::spawn(watch::sample_loop(
        state.clone(),
        publisher.clone(),
        sampling_stop.clone(),
    ));
    let delivery_stop = CancellationToken::new();
    let delivery = tokio::spawn({
        let publisher = publisher.clone();
        let stop = delivery_stop.clone();
        async move { publisher.run(stop).await }
    });

    let api = AgentServer::new(watch::AgentApi::new(state, publisher))
        .max_decoding_message_size(config.grpc.max_message_bytes)
        .max_encoding_message_size(config.grpc.max_message_bytes);
    let served = grpc::serve(
        listener,
        Routes::new(health_service).add_service(api),
        &[SERVICE_NAME],
        &config.grpc,
        shutdown.clone(),
    )
    .await;

    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::NotServing)
        .await;
    // Stop sampling first, then let delivery flush and spool what is left.
    sampling_stop.cancel();
    let _ = sampler.await;
    delivery_stop.cancel();
    match delivery.await {
        Ok(result) => result?,
        Err(e) => tracing::error!(error = %e, "delivery task panicked"),
    }
    served?;
    Ok(())
}
