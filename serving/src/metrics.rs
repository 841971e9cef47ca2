//! Prometheus metrics for every server: `--metrics-listen ADDR` (part of
//! [`GrpcOptions`](crate::grpc::GrpcOptions), installed by
//! [`serve`](crate::grpc::serve)) serves the process's metrics (the `metrics` facade's counters, gauges and
//! histograms) as text at `http://ADDR/metrics`.

use std::net::SocketAddr;

/// Where metrics are served.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsOptions {
    /// Serve Prometheus metrics on this address (`/metrics`); off when
    /// absent.
    #[arg(long, env = "HEADROOM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {reason}")]
pub struct MetricsError {
    addr: SocketAddr,
    reason: String,
}

/// Installs the Prometheus recorder and its HTTP listener, when asked.
/// Call it inside the Tokio runtime, once per process.
pub fn install(options: &MetricsOptions) -> Result<(), MetricsError> {
    let Some(addr) = options.metrics_listen else {
        return Ok(());
    };
    // Bind first, so a taken port is a clear error rather than a log line.
    std::net::TcpListener::bind(addr).map_err(|e| MetricsError {
        addr,
        reason: e.to_string(),
    })?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| MetricsError {
            addr,
            reason: e.to_string(),
        })?;
    tracing::info!(%addr, "prometheus metrics on /metrics");
    Ok(())
}
