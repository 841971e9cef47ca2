//! What the end-to-end tests share.
#![allow(dead_code, unreachable_pub)]

use std::{path::Path, time::Duration};

use headroom_agent::{AgentConfig, PublisherOptions};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;

/// An agent publishing to `topic` on the test broker, spooling under
/// `spool_dir`, watching nothing yet and running no task.
pub fn agent_config(host: &str, topic: &str, spool_dir: &Path, grpc: GrpcOptions) -> AgentConfig {
    AgentConfig {
        host: host.into(),
        interval: Duration::from_secs(1),
        targets: Vec::new(),
        discovery: None,
        task: None,
        publisher: PublisherOptions {
            brokers: kit::kafka_brokers(),
            topic: topic.into(),
            partitions: 1,
            buffer_records: 100,
            spool_dir: spool_dir.join("spool"),
            spool_bytes: 1 << 20,
            delivery_timeout: Duration::from_secs(5),
            kafka_options: Vec::new(),
        },
        grpc,
    }
}
