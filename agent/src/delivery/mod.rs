//! Getting samples to the broker: a bounded in-memory queue, the on-disk
//! spool for outages, and the delivery task.

mod producer;
pub mod publisher;
pub mod spool;

pub use publisher::{DeliveryStats, PublishError, Publisher, PublisherOptions};
