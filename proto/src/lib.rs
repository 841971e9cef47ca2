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

    /// Every resource, in their canonical order.
    pub const ALL: [&str; 6] = [CPU, MEMORY, DISK_READ, DISK_WRITE, NET_RX, NET_TX];

    /// The unit of a resource's values, or `None` for an unknown name.
    pub fn unit(name: &str) -> Option<&'static str> {
        match name {
            CPU => Some("cores"),
            MEMORY => Some("bytes"),
            DISK_READ | DISK_WRITE | NET_RX | NET_TX => Some("bytes/s"),
            _ => None,
        }
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
