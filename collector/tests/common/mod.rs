//! Helpers shared by the collector's integration tests: record builders,
//! a producer, and a collector started in-process on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use headroom_collector::{CollectorConfig, ingest::IngestOptions};
use headroom_proto::{
    time::from_unix_ms,
    v1::{Measurement, ServiceUsage, UsageMessage, usage_message::Body},
};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// 2026-01-01T00:00:00Z in ms: a fixed, past origin for test samples.
pub const T0: i64 = 1_767_225_600_000;

/// One encoded usage record from the host `test-host`.
pub fn usage(task: &str, service: &str, ts_ms: i64, measurements: &[(&str, f64)]) -> Vec<u8> {
    usage_from("test-host", task, service, ts_ms, measurements)
}

/// One encoded usage record as the agent on `host` publishes it (its
/// instance: the host).
pub fn usage_from(
    host: &str,
    task: &str,
    service: &str,
    ts_ms: i64,
    measurements: &[(&str, f64)],
) -> Vec<u8> {
    UsageMessage {
        body: Some(Body::Usage(ServiceUsage {
            host: host.into(),
            service: service.into(),
            task_id: task.into(),
            task_start: Some(from_unix_ms(T0)),
            ts: Some(from_unix_ms(ts_ms)),
            measurements: measurements
                .iter()
                .map(|(r, v)| Measurement {
                    resource: (*r).into(),
                    value: *v,
                })
                .collect(),
            interval_seconds: 1.0,
            sequence: 0,
            task_services: vec!["api".into(), "db".into(), "worker".into()],
            instance: String::new(),
        })),
    }
    .encode_to_vec()
}

/// Produces `(key, payload)` records, optionally to a fixed partition, and
/// waits for every delivery.
pub async fn produce(
    topic: &str,
    records: &[(String, Vec<u8>)],
    partition: Option<i32>,
) -> anyhow::Result<()> {
    produce_with(kit::producer_config(), topic, records, partition).await
}

/// [`produce`] with a producer of the given settings (another broker, or
/// security settings); a record may wait up to two minutes for a broker.
pub async fn produce_with(
    mut config: rdkafka::ClientConfig,
    topic: &str,
    records: &[(String, Vec<u8>)],
    partition: Option<i32>,
) -> anyhow::Result<()> {
    let producer: FutureProducer = config
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create()?;
    let sends = records.iter().map(|(key, payload)| {
        let mut record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(payload.as_slice());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer.send(record, Duration::from_secs(30))
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// The collector binary, configured for a test topic and group, its
/// Prometheus metrics on `metrics`; callers add settings and spawn it.
pub fn collector_command(
    db_url: &str,
    topic: &str,
    group: &str,
    metrics: std::net::SocketAddr,
) -> std::process::Command {
    // Set when compiled as the collector's own test; this file is also
    // included by other crates' tests, which find the built binary.
    let bin = option_env!("CARGO_BIN_EXE_headroom-collector")
        .map(std::path::PathBuf::from)
        .or_else(|| kit::workspace_binary("headroom-collector").ok())
        .unwrap_or_else(|| "headroom-collector".into());
    let mut command = std::process::Command::new(bin);
    command
        .env("HEADROOM_METRICS_LISTEN", metrics.to_string())
        .env("HEADROOM_DATABASE_URL", db_url)
        .env("HEADROOM_KAFKA_BROKERS", kit::kafka_brokers())
        .env("HEADROOM_TOPIC", topic)
        .env("HEADROOM_GROUP", group)
        .env("HEADROOM_TOPIC_PARTITIONS", "3")
        .env("HEADROOM_SESSION_TIMEOUT", "6s")
        .env("HEADROOM_LISTEN", "127.0.0.1:0")
        .env("HEADROOM_LOG", "warn")
        .stdout(std::process::Stdio::null());
    command
}

/// Ingest options for a test topic, with a unique group and a short
/// session timeout.
pub fn ingest_options(topic: &str) -> IngestOptions {
    let mut options = IngestOptions::new(kit::kafka_brokers(), topic);
    options.group = kit::unique_name("collector");
    options.session_timeout = Duration::from_secs(6);
    options.batch_wait = Duration::from_millis(50);
    options.partitions = 3;
    options
}

/// A collector in-process.
pub async fn start(database_url: &str, ingest: IngestOptions) -> anyhow::Result<kit::TestServer> {
    let config = CollectorConfig {
        database_url: database_url.to_string(),
        max_connections: 4,
        ingest: Some(ingest),
        lifecycle: Default::default(),
        grpc: GrpcOptions::default(),
    };
    kit::spawn_server(move |listener, shutdown| headroom_collector::run(listener, shutdown, config))
        .await
}

/// Rows in `samples`, 0 while the schema does not exist yet.
pub async fn count_samples(pool: &headroom_store::PgPool, task: &str) -> i64 {
    headroom_store::count_samples(pool, task, None, None)
        .await
        .unwrap_or(0)
}

/// Waits until `task` has exactly `want` rows (fails on more, or timeout).
pub async fn wait_for_rows(
    pool: &headroom_store::PgPool,
    task: &str,
    want: i64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let got = kit::eventually(&format!("{want} rows of task {task}"), timeout, || async {
        let n = count_samples(pool, task).await;
        (n >= want).then_some(n)
    })
    .await?;
    anyhow::ensure!(
        got == want,
        "task {task}: {got} rows stored, want exactly {want}"
    );
    Ok(())
}

/// The health status `server` reports for `service` (`""`: liveness, the
/// collector's name: readiness); `None` when it does not answer.
pub async fn health_of(server: &kit::TestServer, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(server.channel().await.ok()?);
    health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
}

/// Waits until `server` reports `want` for `service`.
pub async fn wait_for_health(
    server: &kit::TestServer,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
    what: &str,
) -> anyhow::Result<()> {
    kit::eventually(what, Duration::from_secs(30), || async {
        (health_of(server, service).await? == want as i32).then_some(())
    })
    .await
}
