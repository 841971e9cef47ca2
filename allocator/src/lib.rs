//! Headroom allocator.
pub mod place;
pub mod strategy;
