//! Headroom collector (built in its own issue).
