//! Headroom agent (built in its own issue).
