//! The report page over HTTP: `headroom-allocator serve --report-listen
//! ADDR` answers
//!
//! - `GET /report?services=a,b` (or `task=ID`) with the page that
//!   `headroom-allocator report --html` writes, as `text/html`;
//! - `GET /report.json?…` with the same numbers as `report --json`.
//!
//! Optional query parameters: `resources=cpu,memory`, `split=RFC3339`
//! (adds the backtest of the tasks started at or after it, with its
//! charts) and `target=0.01` (the violation rate the model-based
//! strategies aim at). The page is gathered through the allocator's own
//! gRPC API, as the CLI gathers it, so both show the same numbers. A bad
//! parameter answers 400 with one line naming it and its value; what the
//! allocator refuses answers the HTTP form of its gRPC status (400, 404,
//! 412, 503) with its message.

use std::collections::BTreeMap;

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use headroom_serving::tls::ClientTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{ReportAsk, gather, html, json};
use crate::{allocate::Workload, grpc::client::Client, params::Overrides};

/// Where the report server gets its numbers.
#[derive(Debug, Clone)]
pub struct ReportSource {
    /// The allocator's gRPC URL (plaintext; normally its own listener on
    /// the loopback address).
    pub allocator: String,
    /// The collector's URL, TLS and history window (seconds) for current
    /// usage; `None` leaves usage off the page.
    pub collector: Option<(String, ClientTls, f64)>,
}

/// Query parameters the report accepts.
const PARAMETERS: [&str; 5] = ["services", "task", "resources", "split", "target"];

/// Serves the report on `listener` until `shutdown` is cancelled.
///
/// # Errors
/// The listener failing (a bad request is an HTTP answer, never an error).
pub async fn serve(
    listener: TcpListener,
    source: ReportSource,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/report", get(page))
        .route("/report.json", get(numbers))
        .with_state(source);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "report page on /report");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn page(state: State<ReportSource>, query: Query<Vec<(String, String)>>) -> Response {
    answer(state, query, "text/html; charset=utf-8", html).await
}

async fn numbers(state: State<ReportSource>, query: Query<Vec<(String, String)>>) -> Response {
    answer(state, query, "application/json", json).await
}

async fn answer(
    State(source): State<ReportSource>,
    Query(pairs): Query<Vec<(String, String)>>,
    content_type: &'static str,
    render: impl FnOnce(&super::Report) -> crate::error::Result<String>,
) -> Response {
    let ask = match ask_of(&pairs, &source) {
        Ok(a) => a,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let made = async {
        let client = Client::connect(&source.allocator, &ClientTls::default()).await?;
        render(&gather(&client, &ask).await?)
    }
    .await;
    match made {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            // The one mapping of errors to gRPC codes, then to HTTP.
            let status = tonic::Status::from(e);
            (
                http_status(status.code()),
                format!("{}\n", status.message()),
            )
                .into_response()
        }
    }
}

/// The usual HTTP form of a gRPC status code.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The report a query asks for; the reason when a parameter is unknown,
/// repeated or malformed, naming it and its value.
fn ask_of(pairs: &[(String, String)], source: &ReportSource) -> Result<ReportAsk, String> {
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in pairs {
        let Some(known) = PARAMETERS.iter().find(|p| **p == k.as_str()) else {
            return Err(format!(
                "unknown query parameter {k:?}; known: {}",
                PARAMETERS.join(", ")
            ));
        };
        if given.insert(known, v).is_some() {
            return Err(format!("query parameter {k:?} is given twice"));
        }
    }
    let list = |k: &str| -> Vec<String> {
        given
            .get(k)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let workload = Workload {
        task_id: given.get("task").map(|t| t.to_string()),
        services: list("services"),
        resources: list("resources"),
    };
    if workload.task_id.is_some() && !workload.services.is_empty() {
        return Err("give services or task, not both".into());
    }
    if workload.task_id.is_none() && workload.services.is_empty() {
        return Err("give services=a,b or task=ID".into());
    }
    let params = Overrides {
        target_violation_rate: given
            .get("target")
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|_| format!("target is {t:?}, not a number"))
            })
            .transpose()?,
        ..Overrides::default()
    };
    let split = given
        .get("split")
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_micros() as f64 * 1e-6)
                .map_err(|e| format!("split is {s:?}, not an RFC 3339 time ({e})"))
        })
        .transpose()?;
    Ok(ReportAsk::new(
        workload,
        params,
        split,
        source.collector.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn source() -> ReportSource {
        ReportSource {
            allocator: "http://127.0.0.1:1".into(),
            collector: None,
        }
    }

    #[test]
    fn a_query_becomes_the_reports_ask() {
        let ask = ask_of(
            &pairs(&[
                ("services", "api, db"),
                ("resources", "cpu"),
                ("split", "2026-11-20T00:00:00Z"),
                ("target", "0.01"),
            ]),
            &source(),
        )
        .unwrap();
        assert_eq!(ask.workload.services, ["api", "db"]);
        assert_eq!(ask.workload.resources, ["cpu"]);
        assert_eq!(ask.params.target_violation_rate, Some(0.01));
        let b = ask.backtest.unwrap();
        assert_eq!(b.split, Some(1_795_132_800.0));
        assert_eq!(b.resources, ["cpu"]);
        assert_eq!(b.services, ["api", "db"], "the page's services only");
    }

    #[test]
    fn bad_queries_name_the_parameter_and_its_value() {
        let why = |q: &[(&str, &str)]| ask_of(&pairs(q), &source()).unwrap_err();
        assert!(why(&[]).contains("services=a,b or task=ID"));
        assert!(why(&[("service", "a")]).contains("unknown query parameter \"service\""));
        assert!(why(&[("services", "a"), ("services", "b")]).contains("given twice"));
        assert!(why(&[("services", "a"), ("task", "t")]).contains("not both"));
        assert!(why(&[("services", "a"), ("target", "high")]).contains("target is \"high\""));
        assert!(
            why(&[("services", "a"), ("split", "yesterday")]).contains("split is \"yesterday\"")
        );
    }
}
