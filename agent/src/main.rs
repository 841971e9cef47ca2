//! `headroom-agent`: watch services on this host and publish their usage.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use headroom_agent::{AgentConfig, PublisherOptions, TargetSpec};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry};

/// Samples each watched service's CPU, memory, disk and network IO and
/// publishes protobuf samples to Kafka (gRPC headroom.v1.Agent).
#[derive(Debug, Parser)]
#[command(name = "headroom-agent", version)]
struct Cli {
    /// gRPC listen address.
    #[arg(long, env = "HEADROOM_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Targets as service=kind:value, kind one of pid, name, cmd (a regular
    /// expression over the command line), cgroup (repeatable; comma-separated
    /// in the environment).
    #[arg(long = "watch", env = "HEADROOM_WATCH", value_delimiter = ',')]
    watch: Vec<String>,
    /// Host name the samples carry; the machine's when empty.
    #[arg(long, env = "HEADROOM_HOST", default_value = "")]
    host: String,
    /// Sampling interval, e.g. "1s".
    #[arg(long, env = "HEADROOM_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Kafka bootstrap servers.
    #[arg(long, env = "HEADROOM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Usage topic.
    #[arg(long, env = "HEADROOM_TOPIC", default_value = "headroom-usage")]
    topic: String,
    /// Partitions when the agent creates the topic.
    #[arg(long, env = "HEADROOM_TOPIC_PARTITIONS", default_value_t = 8)]
    partitions: i32,
    /// Records held in memory before spilling to the spool.
    #[arg(long, env = "HEADROOM_BUFFER_RECORDS", default_value_t = 10_000)]
    buffer_records: usize,
    /// Spool directory for records the broker cannot take.
    #[arg(
        long,
        env = "HEADROOM_SPOOL_DIR",
        default_value = "/var/lib/headroom/spool"
    )]
    spool_dir: PathBuf,
    /// Spool bound in bytes; past it records are dropped and counted.
    #[arg(long, env = "HEADROOM_SPOOL_BYTES", default_value_t = 256 * 1024 * 1024)]
    spool_bytes: u64,
    /// How long one delivery may take before it counts as failed.
    #[arg(long, env = "HEADROOM_DELIVERY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    delivery_timeout: Duration,
    /// Extra librdkafka settings as key=value (security.protocol, sasl.*, ssl.*).
    #[arg(
        long = "kafka-option",
        env = "HEADROOM_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    kafka_options: Vec<String>,
    /// Log format.
    #[arg(long, env = "HEADROOM_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,
    #[command(flatten)]
    grpc: GrpcOptions,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    if let Err(e) = run(cli).await {
        eprintln!("headroom-agent: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // A bad target is reported and skipped; the others are still watched.
    let mut targets = Vec::new();
    for text in &cli.watch {
        match TargetSpec::parse(text) {
            Ok(t) => targets.push(t),
            Err(e) => tracing::error!(error = %e, "target refused"),
        }
    }
    let kafka_options = headroom_serving::options::key_values(&cli.kafka_options)
        .map_err(|e| anyhow::anyhow!("kafka {e}"))?;
    let host = if cli.host.is_empty() {
        sysinfo::System::host_name().unwrap_or_else(|| "localhost".into())
    } else {
        cli.host
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("while binding {}", cli.listen))?;
    let config = AgentConfig {
        host,
        interval: cli.interval,
        targets,
        publisher: PublisherOptions {
            brokers: cli.brokers,
            topic: cli.topic,
            partitions: cli.partitions,
            buffer_records: cli.buffer_records,
            spool_dir: cli.spool_dir,
            spool_bytes: cli.spool_bytes,
            delivery_timeout: cli.delivery_timeout,
            kafka_options,
        },
        grpc: cli.grpc,
    };
    headroom_agent::run(listener, shutdown::on_signals(), config).await?;
    Ok(())
}
