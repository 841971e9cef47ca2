//! `headroom-agent`: watch services on this host and publish their usage.
//!
//! Settings come from flags, then the environment, then the TOML file given
//! with `--config`, then the defaults shown in `--help`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, anyhow};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, parser::ValueSource};
use headroom_agent::{
    AgentConfig, Discovery, PublisherOptions, TargetSpec,
    config::{self, FileConfig},
    sampling::kubernetes::{self, KubeOptions},
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
    /// gRPC listen address.
    #[arg(long, env = "HEADROOM_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Targets as service=kind:value, kind one of pid, name, cmd (a regular
    /// expression over the command line), cgroup (repeatable; comma-separated
    /// in the environment).
    #[arg(long = "watch", env = "HEADROOM_WATCH", value_delimiter = ',')]
    watch: Vec<String>,
    /// Host name the samples carry [default: the machine's].
    #[arg(long, env = "HEADROOM_HOST")]
    host: Option<String>,
    /// Sampling interval.
    #[arg(long, env = "HEADROOM_INTERVAL", default_value = config::DEFAULT_INTERVAL)]
    interval: String,
    /// Discover containers under the cgroup root.
    #[arg(
        long,
        env = "HEADROOM_DISCOVERY",
        default_value_t = config::DEFAULT_DISCOVERY,
        action = clap::ArgAction::Set
    )]
    discovery: bool,
    /// cgroup root that discovery walks (on cgroup v1, its memory
    /// controller's tree).
    #[arg(long, env = "HEADROOM_DISCOVERY_ROOT", default_value = config::DEFAULT_DISCOVERY_ROOT)]
    discovery_root: PathBuf,
    /// Discovery pattern over cgroup paths relative to the root, with a
    /// (?P<service>…) group naming the service and an optional
    /// (?P<instance>…) group naming the replica, else the path does
    /// (repeatable) [default: Docker and Kubernetes containers, named by
    /// their 12-digit id].
    #[arg(
        long = "discovery-pattern",
        env = "HEADROOM_DISCOVERY_PATTERNS",
        value_delimiter = ','
    )]
    discovery_patterns: Vec<String>,
    /// How often discovery rescans.
    #[arg(long, env = "HEADROOM_DISCOVERY_EVERY", default_value = config::DEFAULT_DISCOVERY_EVERY)]
    discovery_every: String,
    #[command(flatten)]
    kube: KubeOptions,
    /// Start a task with these services when the agent starts.
    #[arg(long, env = "HEADROOM_TASK_SERVICES", value_delimiter = ',')]
    task_services: Vec<String>,
    /// Id of the task started with --task-services [default: generated].
    #[arg(long, env = "HEADROOM_TASK_ID")]
    task_id: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "HEADROOM_KAFKA_BROKERS", default_value = config::DEFAULT_BROKERS)]
    brokers: String,
    /// Usage topic.
    #[arg(long, env = "HEADROOM_TOPIC", default_value = config::DEFAULT_TOPIC)]
    topic: String,
    /// Partitions when the agent creates the topic.
    #[arg(long, env = "HEADROOM_TOPIC_PARTITIONS", default_value_t = config::DEFAULT_PARTITIONS)]
    partitions: i32,
    /// Records held in memory before spilling to the spool.
    #[arg(long, env = "HEADROOM_BUFFER_RECORDS", default_value_t = config::DEFAULT_BUFFER_RECORDS)]
    buffer_records: usize,
    /// Spool directory for records the broker cannot take.
    #[arg(long, env = "HEADROOM_SPOOL_DIR", default_value = config::DEFAULT_SPOOL_DIR)]
    spool_dir: PathBuf,
    /// Spool bound in bytes; past it records are dropped and counted.
    #[arg(long, env = "HEADROOM_SPOOL_BYTES", default_value_t = config::DEFAULT_SPOOL_BYTES)]
    spool_bytes: u64,
    /// How long one delivery may take before it counts as failed.
    #[arg(long, env = "HEADROOM_DELIVERY_TIMEOUT", default_value = config::DEFAULT_DELIVERY_TIMEOUT)]
    delivery_timeout: String,
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
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    telemetry::init(cli.log_format);
    if let Err(e) = run(cli, &matches).await {
        eprintln!("headroom-agent: {}", headroom_options::one_line(e.as_ref()));
        std::process::exit(1);
    }
}

/// The option's value when a flag or the environment gave it, else the
/// file's, else the option's default: what `--help` shows.
fn pick<T>(matches: &ArgMatches, id: &str, option: T, file: Option<T>) -> T {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => option,
        _ => file.unwrap_or(option),
    }
}

/// A duration setting, named in the error.
fn duration(setting: &str, text: String) -> anyhow::Result<Duration> {
    config::duration(setting, &text).map_err(|e| anyhow!(e))
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
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
                if let Some(old) = targets.iter().find(|old| old.service == t.service) {
                    // One configured target per service per agent (its
                    // instance is the host): the later one wins, said out
                    // loud rather than silently.
                    tracing::warn!(
                        service = %t.service,
                        replaced = ?old.selector,
                        by = ?t.selector,
                        "service watched twice; the later target wins (replicas on one host: give each its own cgroup for discovery)"
                    );
                }
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
    let discovery = if pick(matches, "discovery", cli.discovery, file.discovery.enabled) {
        let root = pick(
            matches,
            "discovery_root",
            cli.discovery_root,
            file.discovery.root,
        );
        let patterns = if cli.discovery_patterns.is_empty() {
            file.discovery.patterns
        } else {
            cli.discovery_patterns
        };
        let every = duration(
            "discovery interval",
            pick(
                matches,
                "discovery_every",
                cli.discovery_every,
                file.discovery.every,
            ),
        )?;
        let mut discovery = Discovery::new(root, &patterns)?;
        if cli.kube.enabled {
            discovery = discovery.with_kubernetes(kubernetes::watch_pods(&cli.kube).await?);
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
    let listen = pick(matches, "listen", cli.listen, file.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding {listen}"))?;
    let config = AgentConfig {
        host,
        interval: duration(
            "interval",
            pick(matches, "interval", cli.interval, file.interval),
        )?,
        targets,
        discovery,
        task,
        publisher: PublisherOptions {
            brokers: pick(matches, "brokers", cli.brokers, file.kafka.brokers),
            topic: pick(matches, "topic", cli.topic, file.kafka.topic),
            partitions: pick(matches, "partitions", cli.partitions, file.kafka.partitions),
            buffer_records: pick(
                matches,
                "buffer_records",
                cli.buffer_records,
                file.spool.buffer_records,
            ),
            spool_dir: pick(matches, "spool_dir", cli.spool_dir, file.spool.dir),
            spool_bytes: pick(matches, "spool_bytes", cli.spool_bytes, file.spool.bytes),
            delivery_timeout: duration(
                "delivery timeout",
                pick(
                    matches,
                    "delivery_timeout",
                    cli.delivery_timeout,
                    file.kafka.delivery_timeout,
                ),
            )?,
            kafka_options,
        },
        grpc: cli.grpc,
    };
    headroom_agent::run(listener, shutdown::on_signals(), config).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_also_an_environment_variable() {
        headroom_options::assert_every_option_has_env(&Cli::command());
    }

    /// Every option merged with the file: given on the command line it
    /// wins, left out the file's value does; a misspelt id would panic.
    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        // The environment of the test run does not count.
        let command = || Cli::command().mut_args(|a| a.env(None::<&str>));
        let given = command().get_matches_from([
            "headroom-agent",
            "--listen",
            "127.0.0.1:1",
            "--interval",
            "2s",
            "--discovery",
            "false",
            "--discovery-root",
            "/r",
            "--discovery-every",
            "3s",
            "--brokers",
            "b:1",
            "--topic",
            "t",
            "--partitions",
            "3",
            "--buffer-records",
            "4",
            "--spool-dir",
            "/s",
            "--spool-bytes",
            "5",
            "--delivery-timeout",
            "6s",
        ]);
        let defaults = command().get_matches_from(["headroom-agent"]);
        for id in [
            "listen",
            "interval",
            "discovery",
            "discovery_root",
            "discovery_every",
            "brokers",
            "topic",
            "partitions",
            "buffer_records",
            "spool_dir",
            "spool_bytes",
            "delivery_timeout",
        ] {
            assert_eq!(pick(&given, id, "flag", Some("file")), "flag", "{id}");
            assert_eq!(pick(&defaults, id, "default", Some("file")), "file", "{id}");
            assert_eq!(pick(&defaults, id, "default", None), "default", "{id}");
        }
        let cli = Cli::from_arg_matches(&defaults).unwrap();
        assert_eq!(cli.listen.to_string(), config::DEFAULT_LISTEN);
        assert_eq!(cli.spool_bytes, config::DEFAULT_SPOOL_BYTES);
    }
}
