//! The agent's TOML configuration file. Every setting also has a flag and
//! an environment variable; those win over the file, and the file wins over
//! the built-in defaults. Targets from the file and from `--watch` are
//! merged (a flag target replaces a file target of the same service).
//!
//! ```toml
//! host = "web-1"
//! interval = "1s"
//! listen = "127.0.0.1:50051"
//!
//! [kafka]
//! brokers = "kafka-1:9092,kafka-2:9092"
//! topic = "headroom-usage"
//! options = { "security.protocol" = "SSL" }
//!
//! [spool]
//! dir = "/var/lib/headroom/spool"
//! bytes = 268435456
//!
//! [discovery]
//! enabled = true
//! root = "/sys/fs/cgroup"
//! patterns = ['^apps/(?P<service>[a-z-]+)\.scope$']
//! every = "10s"
//!
//! [task]
//! id = "nightly-batch"
//! services = ["web", "db"]
//!
//! [[targets]]
//! service = "web"
//! name = "nginx"
//!
//! [[targets]]
//! service = "db"
//! cgroup = "/sys/fs/cgroup/system.slice/postgresql.service"
//! ```

use std::{collections::BTreeMap, net::SocketAddr, path::Path, path::PathBuf, time::Duration};

use headroom_proto::v1::{Target, target::Selector};
use serde::Deserialize;

use crate::targets::{SpecError, TargetSpec};

/// gRPC listen address when neither flag, environment nor file sets one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Sampling interval by default.
pub const DEFAULT_INTERVAL: &str = "1s";
/// Whether containers are discovered by default.
pub const DEFAULT_DISCOVERY: bool = true;
/// The cgroup root discovery walks by default.
pub const DEFAULT_DISCOVERY_ROOT: &str = "/sys/fs/cgroup";
/// How often discovery rescans by default.
pub const DEFAULT_DISCOVERY_EVERY: &str = "10s";
/// Kafka bootstrap servers by default.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// The usage topic by default.
pub const DEFAULT_TOPIC: &str = "headroom-usage";
/// Partitions when the agent creates the topic, by default.
pub const DEFAULT_PARTITIONS: i32 = 8;
/// Records held in memory before spilling to the spool, by default.
pub const DEFAULT_BUFFER_RECORDS: usize = 10_000;
/// The spool directory by default.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/headroom/spool";
/// The spool bound in bytes by default (256 MiB).
pub const DEFAULT_SPOOL_BYTES: u64 = 256 * 1024 * 1024;
/// How long one delivery may take by default.
pub const DEFAULT_DELIVERY_TIMEOUT: &str = "10s";

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address.
    pub listen: Option<SocketAddr>,
    /// Host name samples carry.
    pub host: Option<String>,
    /// Sampling interval ("1s", "500ms").
    pub interval: Option<String>,
    /// Delivery to Kafka.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// Buffering through outages.
    #[serde(default)]
    pub spool: SpoolSection,
    /// Container discovery.
    #[serde(default)]
    pub discovery: DiscoverySection,
    /// A task started with the agent.
    pub task: Option<TaskSection>,
    /// Targets watched from the start.
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
}

/// `[kafka]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers.
    pub brokers: Option<String>,
    /// Usage topic.
    pub topic: Option<String>,
    /// Partitions when the agent creates the topic.
    pub partitions: Option<i32>,
    /// How long one delivery may take ("10s").
    pub delivery_timeout: Option<String>,
    /// Extra librdkafka settings.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `[spool]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Spool directory.
    pub dir: Option<PathBuf>,
    /// Spool bound in bytes.
    pub bytes: Option<u64>,
    /// Records held in memory before spilling to the spool.
    pub buffer_records: Option<usize>,
}

/// `[discovery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// Whether containers are discovered.
    pub enabled: Option<bool>,
    /// cgroup root to walk.
    pub root: Option<PathBuf>,
    /// Patterns with a `service` group (and optionally an `instance`
    /// group); the built-in ones when empty.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Rescan period ("10s").
    pub every: Option<String>,
}

/// `[task]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// Task id; generated when absent.
    pub id: Option<String>,
    /// The task's services.
    pub services: Vec<String>,
}

/// One `[[targets]]` entry: a service and exactly one selector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetEntry {
    /// Service name.
    pub service: String,
    /// A process id (with its descendants).
    pub pid: Option<u32>,
    /// Exact process name.
    pub name: Option<String>,
    /// Regular expression over the command line.
    pub cmd: Option<String>,
    /// cgroup path, relative to the cgroup root or full (v1 or v2).
    pub cgroup: Option<String>,
}

impl FileConfig {
    /// Reads and parses a file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }
}

impl TargetEntry {
    /// Validates the entry as the API would.
    pub fn to_spec(&self) -> Result<TargetSpec, SpecError> {
        let mut selectors = [
            self.pid.map(Selector::Pid),
            self.name.clone().map(Selector::ProcessName),
            self.cmd.clone().map(Selector::CmdlinePattern),
            self.cgroup.clone().map(Selector::CgroupPath),
        ]
        .into_iter()
        .flatten();
        let selector = selectors.next();
        if selectors.next().is_some() {
            return Err(SpecError {
                service: self.service.clone(),
                reason: "give exactly one of pid, name, cmd, cgroup".into(),
            });
        }
        TargetSpec::from_proto(&Target {
            service: self.service.clone(),
            selector,
        })
    }
}

/// Parses a duration setting, naming it in the error.
pub fn duration(setting: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{setting} {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_string() + "\n")
            .collect();
        let file = FileConfig::parse(&example).unwrap();
        assert_eq!(file.host.as_deref(), Some("web-1"));
        assert_eq!(file.kafka.options["security.protocol"], "SSL");
        assert_eq!(file.discovery.patterns.len(), 1);
        assert_eq!(file.task.unwrap().services, ["web", "db"]);
        assert_eq!(file.targets.len(), 2);
        assert!(matches!(
            file.targets[0].to_spec().unwrap().selector,
            crate::sampling::Selector::Name(_)
        ));
    }

    #[test]
    fn refuses_unknown_keys_and_ambiguous_targets() {
        let e = FileConfig::parse("intervall = \"1s\"").unwrap_err();
        assert!(e.contains("intervall"), "{e}");
        let file = FileConfig::parse(
            "[[targets]]\nservice = \"web\"\npid = 1\nname = \"nginx\"\n\
             [[targets]]\nservice = \"db\"\n",
        )
        .unwrap();
        let e = file.targets[0].to_spec().unwrap_err().to_string();
        assert!(e.contains("\"web\"") && e.contains("exactly one"), "{e}");
        let e = file.targets[1].to_spec().unwrap_err().to_string();
        assert!(e.contains("\"db\"") && e.contains("no selector"), "{e}");
        assert!(
            duration("interval", "soon")
                .unwrap_err()
                .contains("interval")
        );
    }
}
