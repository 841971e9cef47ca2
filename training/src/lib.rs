//! Headroom training (built in its own issue).
