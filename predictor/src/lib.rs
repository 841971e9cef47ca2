//! Headroom predictor (built in its own issue).
