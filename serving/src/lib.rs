//! What every Headroom server shares: log setup, shutdown on signals, and one
//! gRPC stack (limits, request metrics, tracing spans, health, reflection,
//! TLS).

pub mod grpc;
pub mod metrics;
pub mod options;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
