//! Measuring one target: counters turned into rates, cgroup v2 accounting.

pub mod cgroup;
pub mod counters;
pub mod target;

pub use target::{Measured, Sampler, Selector, TargetError};
