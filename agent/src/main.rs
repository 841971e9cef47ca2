//! `headroom-agent`: watch services on this host and publish their usage.
//!
//! Settings come from flags, then the environment, then the TOML file given
//! with `--config`, then the defaults shown in `--help`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, anyhow};
use clap::Parser;
use headroom_agent::{
    AgentConfig, Discovery, PublisherOptions, TargetSpec,
    config::FileConfig,
    sampling::kubernetes::{KubeClient, KubeOptions, spawn_refresher},
};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry};

/// Samples each watched service's CPU, memory, disk and network IO and
/// publishes protobuf samples to Kafka (gRPC headroom.v1.Agent).
#[derive(Debug, Parser)]
#[command(name = "headroom-agent", version)]
struct Cli {
    /// TOML configuration file; flags and environment override it.
    #[arg(long, env = "HEADROOM_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "HEADROOM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Targets as service=kind:value, kind one of pid, name, cmd (a regular
    /// expression over the command line), cgroup (repeatable; comma-separated
    /// in the environment).
    #[arg(long = "watch", env = "HEADROOM_WATCH", value_delimiter = ',')]
    watch: Vec<String>,
    /// Host name the samples carry [default: the machine's].
    #[arg(long, env = "HEADROOM_HOST")]
    host: Option<String>,
    /// Sampling interval [default: 1s].
    #[arg(long, env = "HEADROOM_INTERVAL")]
    interval: Option<String>,
    /// Discover containers under the cgroup root [default: true].
    #[arg(long, env = "HEADROOM_DISCOVERY")]
    discovery: Option<bool>,
    /// cgroup v2 root that discovery walks [default: /sys/fs/cgroup].
    #[arg(long, env = "HEADROOM_DISCOVERY_ROOT")]
    discovery_root: Option<PathBuf>,
    /// Discovery pattern over cgroup paths relative to the root, with a
    /// (?P<service>…) group naming the service (repeatable) [default: Docker
    /// and Kubernetes containers, named by their 12-digit id].
    #[arg(
        long = "discovery-pattern",
        env = "HEADROOM_DISCOVERY_PATTERNS",
        value_delimiter = ','
    )]
    discovery_patterns: Vec<String>,
    /// How often discovery rescans [default: 10s].
    #[arg(long, env = "HEADROOM_DISCOVERY_EVERY")]
    discovery_every: Option<String>,
    #[command(flatten)]
    kube: KubeOptions,
    /// Start a task with these services when the agent starts.
    #[arg(long, env = "HEADROOM_TASK_SERVICES", value_delimiter = ',')]
    task_services: Vec<String>,
    /// Id of the task started with --task-services [default: generated].
    #[arg(long, env = "HEADROOM_TASK_ID")]
    task_id: Option<String>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "HEADROOM_KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Usage topic [default: headroom-usage].
    #[arg(long, env = "HEADROOM_TOPIC")]
    topic: Option<String>,
    /// Partitions when the agent creates the topic [default: 8].
    #[arg(long, env = "HEADROOM_TOPIC_PARTITIONS")]
    partitions: Option<i32>,
    /// Records held in memory before spilling to the spool [default: 10000].
    #[arg(long, env = "HEADROOM_BUFFER_RECORDS")]
    buffer_records: Option<usize>,
    /// Spool directory for records the broker cannot take
    /// [default: /var/lib/headroom/spool].
    #[arg(long, env = "HEADROOM_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Spool bound in bytes; past it records are dropped and counted
    /// [default: 268435456].
    #[arg(long, env = "HEADROOM_SPOOL_BYTES")]
    spool_bytes: Option<u64>,
    /// How long one delivery may take before it counts as failed [default: 10s].
    #[arg(long, env = "HEADROOM_DELIVERY_TIMEOUT")]
    delivery_timeout: Option<String>,
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

/// A duration from the flag, else the file, else the default.
fn duration_of(
    setting: &str,
    flag: Option<String>,
    file: Option<String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match flag.or(file) {
        Some(text) => headroom_agent::config::duration(setting, &text).map_err(|e| anyhow!(e)),
        None => Ok(default),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path).map_err(|e| anyhow!(e))?,
        None => FileConfig::default(),
    };
    // A bad target is reported and skipped; the others are still watched.
    let mut targets: Vec<TargetSpec> = Vec::new();
    let parsed = file
        .targets
        .iter()
        .map(|t| t.to_spec())
        .chain(cli.watch.iter().map(|t| TargetSpec::parse(t)));
    for result in parsed {
        match result {
            Ok(t) => {
                targets.retain(|old| old.service != t.service);
                targets.push(t);
            }
            Err(e) => tracing::error!(error = %e, "target refused"),
        }
    }
    let mut kafka_options: Vec<(String, String)> = file.kafka.options.into_iter().collect();
    kafka_options.extend(
        headroom_serving::options::key_values(&cli.kafka_options)
            .map_err(|e| anyhow!("kafka {e}"))?,
    );
    let host = cli
        .host
        .or(file.host)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()));
    let discovery = if cli.discovery.or(file.discovery.enabled).unwrap_or(true) {
        let root = cli
            .discovery_root
            .or(file.discovery.root)
            .unwrap_or_else(|| "/sys/fs/cgroup".into());
        let patterns = if cli.discovery_patterns.is_empty() {
            file.discovery.patterns
        } else {
            cli.discovery_patterns
        };
        let every = duration_of(
            "discovery interval",
            cli.discovery_every,
            file.discovery.every,
            Duration::from_secs(10),
        )?;
        let mut discovery = Discovery::new(root, &patterns)?;
        if cli.kube.enabled {
            let client = KubeClient::new(&cli.kube)?;
            tracing::info!(?client, "kubernetes discovery");
            discovery = discovery.with_kubernetes(spawn_refresher(client, every));
        }
        Some((discovery, every))
    } else {
        None
    };
    let task = if cli.task_services.is_empty() {
        file.task.map(|t| (t.id.unwrap_or_default(), t.services))
    } else {
        Some((cli.task_id.unwrap_or_default(), cli.task_services))
    };
    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding {listen}"))?;
    let config = AgentConfig {
        host,
        interval: duration_of(
            "interval",
            cli.interval,
            file.interval,
            Duration::from_secs(1),
        )?,
        targets,
        discovery,
        task,
        publisher: PublisherOptions {
            brokers: cli
                .brokers
                .or(file.kafka.brokers)
                .unwrap_or_else(|| "127.0.0.1:9092".into()),
            topic: cli
                .topic
                .or(file.kafka.topic)
                .unwrap_or_else(|| "headroom-usage".into()),
            partitions: cli.partitions.or(file.kafka.partitions).unwrap_or(8),
            buffer_records: cli
                .buffer_records
                .or(file.spool.buffer_records)
                .unwrap_or(10_000),
            spool_dir: cli
                .spool_dir
                .or(file.spool.dir)
                .unwrap_or_else(|| "/var/lib/headroom/spool".into()),
            spool_bytes: cli
                .spool_bytes
                .or(file.spool.bytes)
                .unwrap_or(256 * 1024 * 1024),
            delivery_timeout: duration_of(
                "delivery timeout",
                cli.delivery_timeout,
                file.kafka.delivery_timeout,
                Duration::from_secs(10),
            )?,
            kafka_options,
        },
        grpc: cli.grpc,
    };
    headroom_agent::run(listener, shutdown::on_signals(), config).await?;
    Ok(())
}
