//! `headroom-agent`: samples each watched service's own CPU, memory, disk
//! and network IO (process trees through sysinfo, containers through cgroup
//! v2) and publishes protobuf samples to Kafka.
//!
//! Built so far: the sampling primitives (counter deltas, cgroup v2
//! accounting). Targets, publishing, the spool and the gRPC service follow.

pub mod delivery;
pub mod sampling;
