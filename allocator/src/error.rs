//! The allocator's one error type: every refusal names the field or value
//! at fault; the gRPC service maps it to a status code in one place.

use crate::strategy::STRATEGIES;

/// Everything that can go wrong in the allocator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A strategy parameter is out of its range.
    #[error("{field} must be {range}, got {}", compact(*value))]
    Param {
        /// The parameter's wire name, e.g. `target_violation_rate`.
        field: &'static str,
        /// The value given.
        value: f64,
        /// The accepted range, e.g. `in (0, 1)`.
        range: &'static str,
    },
    /// A parameter names a choice that does not exist.
    #[error("{field} must be one of {choices}, got {value:?}")]
    BadChoice {
        /// The parameter's wire name, e.g. `memory_peaks`.
        field: &'static str,
        /// The value given.
        value: String,
        /// The accepted values, comma-separated.
        choices: &'static str,
    },
    /// A series the placement needs has no allocation (why).
    #[error("cannot place: {0}")]
    Unanswered(String),
    /// A strategy name is unknown.
    #[error("strategy {name:?} does not exist (known: {})", STRATEGIES.join(", "))]
    UnknownStrategy {
        /// The name given.
        name: String,
    },
    /// The strategy cannot answer this kind of request.
    #[error("strategy {strategy:?} {why}")]
    StrategyNotHere {
        /// The strategy's name.
        strategy: &'static str,
        /// Why, as the rest of the sentence.
        why: &'static str,
    },
    /// A resource asked is a pressure signal, not something allocated.
    #[error(
        "resources: {name:?} is a pressure signal Headroom reads to correct the allocations, not a resource to allocate; allocatable: {}",
        headroom_proto::resource::ALL.join(", ")
    )]
    PressureResource {
        /// The resource named.
        name: String,
    },
    /// A backtest whose strategies had no history before the split.
    #[error(
        "no history before the split {split} of the services asked (the last {window} before it): the strategies have nothing to allocate from; give a later split"
    )]
    NoHistoryBeforeSplit {
        /// The split, RFC 3339.
        split: String,
        /// The history window read before it.
        window: String,
    },
    /// The workload names no service.
    #[error("the workload names no services: give a task_id or a non-empty list of services")]
    NoServices,
    /// A list of names holds an empty one (`services: ["api", ""]`).
    #[error("{field}: an empty name (\"\") in the list; every {what} needs a name")]
    EmptyName {
        /// The field, e.g. `services`.
        field: &'static str,
        /// What each name names, e.g. `service`.
        what: &'static str,
    },
    /// The workload names more services than the server takes.
    #[error("the workload names {count} services, more than the limit of {limit}")]
    TooManyServices {
        /// Services named.
        count: usize,
        /// The server's `max_services`.
        limit: usize,
    },
    /// A service the collector never stored.
    #[error("unknown service {service:?} (known: {known})")]
    UnknownService {
        /// The service named.
        service: String,
        /// Services the collector holds (the first 50), comma-separated.
        known: String,
    },
    /// No stored task tells how long a task of this mix runs.
    #[error(
        "no finished task ran {service:?}, so the task's duration is unknown: give params.horizon_seconds (--horizon-seconds)"
    )]
    UnknownHorizon {
        /// The mix's first service.
        service: String,
    },
    /// A history-based strategy found no samples of a series.
    #[error("no history of {service}/{resource} in the last {window}: {strategy} needs samples")]
    NoHistory {
        /// Service of the series.
        service: String,
        /// Resource of the series.
        resource: String,
        /// The history window read, human-readable (`8days`).
        window: String,
        /// The strategy that needed it.
        strategy: &'static str,
    },
    /// Nodes or demands a placement cannot take as given (the message
    /// names the node or service).
    #[error("{0}")]
    Placement(String),
    /// A backtest request names neither a split nor held-out tasks.
    #[error("give a split time or held-out task_ids")]
    NoSplit,
    /// A backtest has nothing to replay.
    #[error("no finished held-out task to replay{hint}")]
    NothingHeldOut {
        /// What to do, starting with "; ": for a split after the newest
        /// task, that task and its start.
        hint: String,
    },
    /// The held-out tasks hold no sample of the services and resources a
    /// backtest asks for, so there is nothing to score.
    #[error(
        "nothing to score: the {tasks} held-out task(s) hold no samples of {resources} \
         for the services asked; ask for resources those tasks recorded"
    )]
    NothingToScore {
        /// Held-out tasks found.
        tasks: usize,
        /// The resources asked, comma-separated.
        resources: String,
    },
    /// None of the services a backtest names ran in the held-out tasks.
    #[error("none of the requested services ran in the held-out tasks")]
    NoHeldOutService,
    /// A service a backtest names did not run in the held-out tasks.
    #[error("service {service:?} did not run in the held-out tasks (those that did: {ran})")]
    ServiceNotHeldOut {
        /// The service asked for.
        service: String,
        /// The services of the held-out tasks, comma-separated.
        ran: String,
    },
    /// A traced service did not run in the held-out tasks.
    #[error("trace service {service:?} did not run in the held-out tasks (those that did: {ran})")]
    UnknownTraceService {
        /// The service asked for.
        service: String,
        /// The services of the held-out tasks, comma-separated.
        ran: String,
    },
    /// `provisioned` was asked for and no import stored any allocation.
    #[error(
        "strategy \"provisioned\" replays an imported trace's allocations, and none are stored for the held-out tasks"
    )]
    NothingProvisioned,
    /// No finished task before a backtest's split tells the task duration.
    #[error(
        "no finished task before the split tells the task duration: give params.horizon_seconds"
    )]
    NoDurationBeforeSplit,
    /// The model saw the held-out data.
    #[error(
        "the model ({version}) was trained on data up to {trained_to}, after the split {split}: train it on history before the split (headroom-train train --end …)"
    )]
    ModelAfterSplit {
        /// The model's version.
        version: String,
        /// End of its training window (RFC 3339).
        trained_to: String,
        /// The backtest's split (RFC 3339).
        split: String,
    },
    /// An upstream (the collector, the predictor, the allocator for the
    /// CLI) refused a call or could not be reached.
    #[error("{}", upstream_message(what, *code, message))]
    Upstream {
        /// Which upstream, e.g. `the collector`.
        what: &'static str,
        /// Its gRPC status code (`google.rpc.Code` number).
        code: i32,
        /// Its message.
        message: String,
    },
    /// Work handed to a blocking thread did not finish.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// Which work.
        what: &'static str,
        /// The panic.
        message: String,
    },
    /// An upstream URL is malformed.
    #[error("bad {what} URL {url:?}: {source}")]
    Url {
        /// Which upstream.
        what: &'static str,
        /// The URL.
        url: String,
        /// Why.
        source: headroom_serving::tls::TlsError,
    },
    /// The allocator (for the CLI) could not be reached.
    #[error("cannot reach the allocator at {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// An answer could not be written as JSON.
    #[error("while writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An answer could not be written as YAML.
    #[error("while writing YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// An answer could not be written as CSV.
    #[error("while writing CSV: {0}")]
    Csv(#[from] csv::Error),
    /// A chart could not be drawn.
    #[error("while drawing {path}: {message}")]
    Chart {
        /// The chart file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] headroom_serving::grpc::ServeError),
}

/// `v` as written by hand: plainly, or in exponent form when it is huge or
/// tiny (1e308, not 309 digits).
fn compact(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-6..1e15).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Result with the allocator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// gRPC codes (`google.rpc.Code`) the allocator tells apart in upstream
/// answers.
pub mod code {
    /// The call was cancelled.
    pub const CANCELLED: i32 = 1;
    /// Unknown error (often a dropped connection).
    pub const UNKNOWN: i32 = 2;
    /// The request was malformed.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// A named thing does not exist.
    pub const NOT_FOUND: i32 = 5;
    /// The server cannot be reached.
    pub const UNAVAILABLE: i32 = 14;
}

/// What an upstream's refusal means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// The caller named something the upstream does not know.
    CallersMistake,
    /// The upstream cannot be reached now.
    Unavailable,
    /// Anything else, passed on with its code.
    Other,
}

/// How an upstream's code reads to the caller.
pub fn upstream_kind(status: i32) -> UpstreamKind {
    match status {
        code::NOT_FOUND | code::INVALID_ARGUMENT => UpstreamKind::CallersMistake,
        code::UNAVAILABLE | code::UNKNOWN | code::CANCELLED | code::DEADLINE_EXCEEDED => {
            UpstreamKind::Unavailable
        }
        _ => UpstreamKind::Other,
    }
}

fn upstream_message(what: &str, code: i32, message: &str) -> String {
    match upstream_kind(code) {
        UpstreamKind::CallersMistake => message.to_string(),
        // The allocator passing on that its own upstream is down: the
        // message names that one ("the predictor is unavailable: …").
        UpstreamKind::Unavailable if message.contains(" is unavailable: ") => message.to_string(),
        UpstreamKind::Unavailable => format!("{what} is unavailable: {message}"),
        // The allocator's own answer, for its CLI: the message says it.
        UpstreamKind::Other if what == "the allocator" => message.to_string(),
        UpstreamKind::Other => format!("{what}: {message}"),
    }
}
