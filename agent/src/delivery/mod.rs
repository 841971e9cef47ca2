//! Getting samples to the broker: the on-disk spool for outages.

pub mod spool;
