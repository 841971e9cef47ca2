//! Headroom allocator (built in its own issue).
