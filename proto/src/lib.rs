//! The `headroom.v1` contracts: gRPC services, their messages and the Kafka
//! usage payload, plus the descriptor set every server offers for reflection.

/// Messages and services of package `headroom.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    tonic::include_proto!("headroom.v1");
}

/// Encoded `FileDescriptorSet` of every `headroom.v1` file, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/headroom_descriptor.bin"));

/// Resource names: stable wire values, with their units.
pub mod resource {
    /// CPU, in cores (CPU-seconds per second).
    pub const CPU: &str = "cpu";
    /// Memory, in bytes.
    pub const MEMORY: &str = "memory";
    /// Disk reads, in bytes per second.
    pub const DISK_READ: &str = "disk_read";
    /// Disk writes, in bytes per second.
    pub const DISK_WRITE: &str = "disk_write";
    /// Network bytes received per second.
    pub const NET_RX: &str = "net_rx";
    /// Network bytes sent per second.
    pub const NET_TX: &str = "net_tx";

    /// OOM kills in the sampling interval (a count): cgroup v2
    /// `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`.
    pub const OOM_KILLS: &str = "oom_kills";
    /// CPU throttling: seconds throttled per second of the interval
    /// (cgroup v2 `cpu.stat` `throttled_usec`, v1 `throttled_time` in ns).
    pub const CPU_THROTTLED: &str = "cpu_throttled";
    /// The memory limit in force, in bytes (v2 `memory.max`, v1
    /// `memory.limit_in_bytes`); absent when unlimited.
    pub const MEMORY_LIMIT: &str = "memory_limit";
    /// The CPU limit in force, in cores (v2 `cpu.max`, v1
    /// `cpu.cfs_quota_us / cpu.cfs_period_us`); absent when unlimited.
    pub const CPU_LIMIT: &str = "cpu_limit";

    /// Every usage resource, in their canonical order: what the model
    /// predicts and the allocator allocates.
    pub const ALL: [&str; 6] = [CPU, MEMORY, DISK_READ, DISK_WRITE, NET_RX, NET_TX];
    /// Pressure and limits: what the allocator learns from (OOM kills,
    /// throttling, the limits it gave), never allocated themselves.
    pub const PRESSURE: [&str; 4] = [OOM_KILLS, CPU_THROTTLED, MEMORY_LIMIT, CPU_LIMIT];
    /// Every resource a sample may carry: usage, then pressure.
    pub const KNOWN: [&str; 10] = [
        CPU,
        MEMORY,
        DISK_READ,
        DISK_WRITE,
        NET_RX,
        NET_TX,
        OOM_KILLS,
        CPU_THROTTLED,
        MEMORY_LIMIT,
        CPU_LIMIT,
    ];

    /// The unit of a resource's values, or `None` for an unknown name.
    pub fn unit(name: &str) -> Option<&'static str> {
        match name {
            CPU | CPU_LIMIT => Some("cores"),
            MEMORY | MEMORY_LIMIT => Some("bytes"),
            DISK_READ | DISK_WRITE | NET_RX | NET_TX => Some("bytes/s"),
            OOM_KILLS => Some("kills"),
            CPU_THROTTLED => Some("seconds/s"),
            _ => None,
        }
    }

    /// Whether `name` is a usage resource (one of [`ALL`]).
    pub fn is_usage(name: &str) -> bool {
        ALL.contains(&name)
    }

    /// Whether `name` is a known resource.
    pub fn is_known(name: &str) -> bool {
        unit(name).is_some()
    }
}

/// Conversions between `prost_types::Timestamp` and `chrono`-free
/// milliseconds, used on every wire boundary.
pub mod time {
    use prost_types::Timestamp;

    /// Milliseconds since the Unix epoch of a timestamp (saturating).
    pub fn to_unix_ms(ts: &Timestamp) -> i64 {
        ts.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(ts.nanos) / 1_000_000)
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub fn from_unix_ms(ms: i64) -> Timestamp {
        Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_names_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
            .collect();
        for name in ["Agent", "Collector", "Predictor", "Allocator"] {
            assert!(services.iter().any(|s| s == name), "missing {name}");
        }
    }

    #[test]
    fn unix_ms_round_trips_including_negative_times() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(time::to_unix_ms(&time::from_unix_ms(ms)), ms);
        }
    }

    #[test]
    fn usage_message_round_trips() {
        let msg = v1::UsageMessage {
            body: Some(v1::usage_message::Body::Usage(v1::ServiceUsage {
                service: "web".into(),
                measurements: vec![v1::Measurement {
                    resource: resource::CPU.into(),
                    value: 0.5,
                }],
                ..Default::default()
            })),
        };
        let back = v1::UsageMessage::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, msg);
    }
}
