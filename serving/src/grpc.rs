//! The gRPC stack every Headroom server runs behind: request timeouts, a
//! global concurrency limit, message-size limits, request metrics, tracing
//! spans, and server reflection over the service's and health's descriptors.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{codegen::http, service::Routes, transport::Server};
use tower::{Layer, Service, ServiceBuilder, limit::GlobalConcurrencyLimitLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// Limits shared by every server; flattened into each binary's options.
#[derive(Debug, Clone, clap::Args)]
pub struct GrpcOptions {
    /// Longest a request may take before it fails with DEADLINE_EXCEEDED
    /// (streams count until their first message), e.g. "30s".
    #[arg(long, env = "HEADROOM_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Requests served at once across all connections; further ones wait.
    #[arg(long, env = "HEADROOM_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Largest request or response message, in bytes; larger ones are
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "HEADROOM_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Prometheus metrics, installed when the server starts.
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsOptions,
    /// TLS, optionally mutual.
    #[command(flatten)]
    pub tls: crate::tls::ServerTls,
}

impl Default for GrpcOptions {
    /// The defaults written in the `#[arg]` attributes above, whatever the
    /// environment says.
    fn default() -> Self {
        crate::options::clap_defaults().expect("every GrpcOptions field has a default")
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptor sets.
    #[error("while building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("while serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The TLS settings could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Services every server lists besides its own: health and reflection.
const REFLECTED_ALWAYS: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// How long connections may drain after shutdown begins.
pub const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `routes` (the service and its health server) on `listener` until
/// `shutdown` is cancelled, then drains connections already accepted (for at most
/// [`DRAIN_PERIOD`]).
/// Reflection (v1 and v1alpha, for every grpcurl) is added here, over the
/// `headroom.v1` and `grpc.health.v1` descriptor sets; it lists exactly
/// `services` (the fully qualified names `routes` serves, e.g.
/// `headroom.v1.Collector`), health and reflection itself, so `grpcurl
/// list` shows what this server answers and nothing else.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&str],
    options: &GrpcOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let tls = options.tls.config()?;
    crate::metrics::install(&options.metrics)?;
    let reflection = || {
        services.iter().copied().chain(REFLECTED_ALWAYS).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(headroom_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, name| b.with_service_name(name),
        )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let routes = routes
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let stack = ServiceBuilder::new()
        // Failed calls are mostly callers' mistakes (NOT_FOUND,
        // INVALID_ARGUMENT): not an operator's alarm.
        .layer(
            TraceLayer::new_for_grpc()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(RequestMetricsLayer)
        .layer(GlobalConcurrencyLimitLayer::new(
            options.concurrency_limit.max(1),
        ))
        .into_inner();

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, tls = tls.is_some(), "grpc server listening");
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|source| crate::tls::TlsError::Transport {
                context: "TLS settings refused".into(),
                source,
            })?;
    }
    let server = builder
        .timeout(options.request_timeout)
        .layer(stack)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // Small answers must leave at once: without TCP_NODELAY a reply
            // of more than one segment waits on the peer's delayed ACK
            // (about 40 ms on Linux).
            tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
                if let Ok(c) = &conn {
                    let _ = c.set_nodelay(true);
                }
                conn
            }),
            shutdown.clone().cancelled_owned(),
        );
    // Idle clients may keep their connections open after the GOAWAY; they
    // get a short drain period, not a veto over shutdown.
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_PERIOD).await;
    };
    tokio::select! {
        served = server => served?,
        _ = drain_deadline => {
            tracing::warn!(?addr, "connections still open after the drain period; closed");
        }
    }
    tracing::info!(?addr, "grpc server stopped");
    Ok(())
}

/// Records `headroom_grpc_requests_total{method,code}` and
/// `headroom_grpc_request_duration_seconds{method}` for every request, and
/// keeps error messages within [`MAX_STATUS_MESSAGE`].
#[derive(Debug, Clone, Copy)]
pub struct RequestMetricsLayer;

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner }
    }
}

/// The service made by [`RequestMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RequestMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut result = future.await;
            if let Ok(response) = &mut result {
                truncate_status_message(response.headers_mut());
            }
            // A handler's error travels in the headers ("trailers-only");
            // a response that got as far as a body reports OK here.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(|code| tonic::Code::from_bytes(code.as_bytes()))
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            metrics::counter!(
                "headroom_grpc_requests_total",
                "method" => method.clone(),
                "code" => format!("{code:?}")
            )
            .increment(1);
            metrics::histogram!("headroom_grpc_request_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Longest `grpc-message` sent, in (percent-encoded) bytes. An error that
/// echoes a huge input back would otherwise exceed the peer's header limit
/// and reach it as a protocol error instead of its status.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Cuts an over-long `grpc-message` header to [`MAX_STATUS_MESSAGE`] bytes,
/// never inside a percent escape, and marks the cut.
fn truncate_status_message(headers: &mut http::HeaderMap) {
    let Some(value) = headers.get("grpc-message") else {
        return;
    };
    let bytes = value.as_bytes();
    if bytes.len() <= MAX_STATUS_MESSAGE {
        return;
    }
    let mut cut = MAX_STATUS_MESSAGE;
    // A '%' in the last two kept bytes starts an escape that would be split.
    if let Some(p) = bytes[cut - 2..cut].iter().position(|b| *b == b'%') {
        cut = cut - 2 + p;
    }
    let mut kept = bytes[..cut].to_vec();
    kept.extend_from_slice(b"%E2%80%A6 (truncated)");
    if let Ok(v) = http::HeaderValue::from_bytes(&kept) {
        headers.insert("grpc-message", v);
    }
}

/// The health status for `serving`.
fn status(serving: bool) -> tonic_health::ServingStatus {
    if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    }
}

/// Reports SERVING or NOT_SERVING for `service` and for the server as a
/// whole (the empty name): for a server starting up ready, or shutting
/// down. Liveness probes ask about the empty name, readiness probes about
/// `service`.
pub async fn report_health(
    health: &tonic_health::server::HealthReporter,
    service: &str,
    serving: bool,
) {
    health.set_service_status(service, status(serving)).await;
    health.set_service_status("", status(serving)).await;
}

/// Readiness: reports whether `service` can do its job now (its database
/// answers, its model is loaded), leaving the server-wide entry (the empty
/// name, liveness) as it is: a server waiting out an outage is alive and
/// must not be restarted for it.
pub async fn report_ready(
    health: &tonic_health::server::HealthReporter,
    service: &str,
    ready: bool,
) {
    health.set_service_status(service, status(ready)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_status_messages_are_cut_outside_escapes() {
        let mut headers = http::HeaderMap::new();
        let long = "%C3%A9".repeat(400);
        headers.insert("grpc-message", http::HeaderValue::from_str(&long).unwrap());
        truncate_status_message(&mut headers);
        let cut = headers["grpc-message"].to_str().unwrap();
        assert!(cut.len() <= MAX_STATUS_MESSAGE + 30, "{}", cut.len());
        assert!(cut.ends_with("%E2%80%A6 (truncated)"));
        let kept = cut.trim_end_matches("%E2%80%A6 (truncated)");
        // Every escape kept is whole.
        assert!(kept.split('%').skip(1).all(|e| e.len() == 2), "{kept}");

        let mut short = http::HeaderMap::new();
        short.insert(
            "grpc-message",
            http::HeaderValue::from_static("unknown service"),
        );
        truncate_status_message(&mut short);
        assert_eq!(short["grpc-message"], "unknown service");
    }
}
