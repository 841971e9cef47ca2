//! Measuring one target: counters turned into rates, cgroup v1 and v2
//! accounting,
//! and discovery of containers under a cgroup root.

pub mod cgroup;
pub mod counters;
pub mod discovery;
pub mod kubernetes;
pub mod target;

pub use discovery::{Discovery, DiscoveryError};
pub use target::{Measured, Sampler, Selector, TargetError};
