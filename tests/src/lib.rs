//! End-to-end tests across Headroom services live in `tests/`.
