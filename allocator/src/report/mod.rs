//! The report page: one self-contained HTML file (no external assets: CSS,
//! script and charts inline) an operator can forward to a service's owners.
//! Per service and resource, current usage (the collector's p50, p95 and
//! max over the history window) against each strategy's recommendation,
//! with expected slack and risk; the backtest table and its charts; the
//! plan as a timeline. Every number on the page carries its base-unit value
//! (`data-value`) beside the text people read, and [`json`] writes the same
//! numbers as the CLI's JSON outputs, so a test can check one against the
//! other.

mod html;
pub mod http;

use serde::Serialize;

use crate::{
    allocate::{PlanReport, Recommendation, Workload},
    backtest::{BacktestAsk, BacktestReport},
    error::{Error, Result},
    grpc::client::Client,
    params::Overrides,
    render::{self, Output, TableFormat},
    strategy::{STRATEGIES, Strategy},
};

pub use html::html;

/// Current usage of one service and resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    /// Service name.
    pub service: String,
    /// Resource wire name.
    pub resource: String,
    /// Samples the figures come from.
    pub samples: u64,
    /// Median, in the resource's base unit.
    pub p50: f64,
    /// 95th percentile, in the resource's base unit.
    pub p95: f64,
    /// Largest value, in the resource's base unit.
    pub max: f64,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the report was made.
    pub generated_at: chrono::DateTime<chrono::Utc>,
    /// What was asked about, in words (services or task).
    pub subject: String,
    /// Current usage per service and resource (empty when the collector
    /// could not be asked: see `notes`).
    pub usage: Vec<Usage>,
    /// Every strategy's recommendations, strategy by strategy.
    pub recommendations: Vec<Recommendation>,
    /// The time-varying plan, when the model could make one.
    pub plan: Option<PlanReport>,
    /// The backtest, when a split or held-out tasks were given.
    pub backtest: Option<BacktestReport>,
    /// What could not be shown and why (a strategy without a model, an
    /// unreachable collector).
    pub notes: Vec<String>,
}

/// What a report covers.
#[derive(Debug, Clone)]
pub struct ReportAsk {
    /// The workload (a task or services).
    pub workload: Workload,
    /// Strategy parameters.
    pub params: Overrides,
    /// The backtest to run, when any (its traces become the charts).
    pub backtest: Option<BacktestAsk>,
    /// Collector URL for current usage, and how far back (seconds).
    pub collector: Option<(String, headroom_serving::tls::ClientTls, f64)>,
}

impl ReportAsk {
    /// The report of `workload` with `params`; with `split` (unix seconds)
    /// also the backtest of the tasks started at or after it, scoring the
    /// page's services and resources only (every service of a task's).
    /// The CLI's `report` and the HTTP page ask the same way.
    pub fn new(
        workload: Workload,
        params: Overrides,
        split: Option<f64>,
        collector: Option<(String, headroom_serving::tls::ClientTls, f64)>,
    ) -> Self {
        Self {
            backtest: split.map(|split| BacktestAsk {
                split: Some(split),
                services: workload.services.clone(),
                resources: workload.resources.clone(),
                params: params.clone(),
                max_tasks: Some(crate::backtest::DEFAULT_MAX_TASKS),
                ..BacktestAsk::default()
            }),
            workload,
            params,
            collector,
        }
    }
}

/// Asks the allocator (and the collector, for usage) for everything the
/// page shows. A strategy, the plan or the usage that cannot be had is a
/// note on the page; the allocator unreachable is an error.
pub async fn gather(client: &Client, ask: &ReportAsk) -> Result<Report> {
    let mut notes = Vec::new();
    let mut recommendations = Vec::new();
    let mut first_error = None;
    // `provisioned` replays an imported trace: backtests only.
    for name in STRATEGIES.into_iter().filter(|s| *s != "provisioned") {
        let strategy: Strategy = name.parse()?;
        match client.recommend(&ask.workload, strategy, &ask.params).await {
            Ok(mut r) => recommendations.append(&mut r),
            Err(e @ (Error::Connect { .. } | Error::Url { .. })) => return Err(e),
            Err(e) => {
                notes.push(format!("strategy {name}: {e}"));
                first_error.get_or_insert(e);
            }
        }
    }
    // No strategy could answer (unknown services, no history): say why.
    if let (true, Some(e)) = (recommendations.is_empty(), first_error) {
        return Err(e);
    }
    let mut services: Vec<String> = recommendations.iter().map(|r| r.service.clone()).collect();
    services.sort();
    services.dedup();
    let plan = match client.plan(&ask.workload, &ask.params).await {
        Ok(p) => Some(p),
        Err(e) => {
            notes.push(format!("plan: {e}"));
            None
        }
    };
    let backtest = match &ask.backtest {
        Some(b) => match client
            .backtest(&BacktestAsk {
                // Charts of every service on the page unless told.
                trace_services: if b.trace_services.is_empty() {
                    services.clone()
                } else {
                    b.trace_services.clone()
                },
                ..b.clone()
            })
            .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("backtest: {e}"));
                None
            }
        },
        None => None,
    };
    let mut resources: Vec<String> = recommendations.iter().map(|r| r.resource.clone()).collect();
    resources.sort();
    resources.dedup();
    let usage = match &ask.collector {
        Some((url, tls, history)) => {
            let since = chrono::Utc::now().timestamp_micros() as f64 * 1e-6 - history;
            match crate::grpc::usage::usage_stats(url, tls, &services, &resources, since).await {
                Ok(u) => u,
                Err(e) => {
                    notes.push(format!("current usage: {e}"));
                    Vec::new()
                }
            }
        }
        None => Vec::new(),
    };
    Ok(Report {
        generated_at: chrono::Utc::now(),
        subject: match &ask.workload.task_id {
            Some(t) => format!("task {t}"),
            None => services.join(", "),
        },
        usage,
        recommendations,
        plan,
        backtest,
        notes,
    })
}

/// The report as JSON, in base units: `recommendations`, `plan` and
/// `backtest` exactly as `recommend`, `plan` and `backtest --output json`
/// write them, plus `usage` (with each resource's `unit`) and `notes`.
pub fn json(report: &Report) -> Result<String> {
    let parse = |text: String| serde_json::from_str::<serde_json::Value>(&text);
    #[derive(Serialize)]
    struct UsageRow<'a> {
        #[serde(flatten)]
        usage: &'a Usage,
        unit: &'static str,
    }
    let value = serde_json::json!({
        "generated_at": report.generated_at.to_rfc3339(),
        "subject": report.subject,
        "usage": report.usage.iter().map(|u| UsageRow {
            usage: u,
            unit: headroom_proto::resource::unit(&u.resource).unwrap_or_default(),
        }).collect::<Vec<_>>(),
        "recommendations": parse(render::recommendations(&report.recommendations, Output::Json)?)?,
        "plan": report.plan.as_ref().map(|p| render::plans(p, Output::Json)).transpose()?.map(parse).transpose()?,
        "backtest": report.backtest.as_ref().map(|b| render::backtest(b, TableFormat::Json)).transpose()?.map(parse).transpose()?,
        "notes": report.notes,
    });
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}
