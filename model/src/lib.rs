//! The usage model's contract, shared by the trainer that writes a
//! `model.onnx` and the predictor that serves it: how a query becomes the
//! network's input row, and how the network's output becomes usage.
//!
//! Everything here travels inside the ONNX file as one metadata entry
//! ([`METADATA_KEY`], JSON), so a model is never served with an encoding
//! other than the one it was trained with.
//!
//! Every query is about one **series** (a service's usage of one resource)
//! and carries that series' [`SeriesContext`]: quantiles of its recent
//! usage. Targets are divided by the context's robust
//! [`scale`](SeriesContext::scale) (per series, as DeepAR does, rather than
//! one scale per resource), so a 10 MB service and a 60 GB VM are learned
//! alike, and a service the model never saw is predicted from its context.
//!
//! Feature layout 2, one `f32` row per query, in this order (`S` services,
//! `R` resources, `P` periods, `σ` the series' scale):
//!
//! | block | width | value |
//! | --- | --- | --- |
//! | task mix | S | 1 for every service of the task the model knows (multi-hot; unknown ones have no column) |
//! | service | S | 1 for the predicted service (one-hot); all 0 for a service outside the vocabulary |
//! | resource | R | 1 for the predicted resource (one-hot) |
//! | scale | 1 | `(clamp(ln σ, min, max) − centre) / spread` of the resource ([`ResourceSpec`]) |
//! | context | 4 | `p50/σ`, `p90/σ`, `p99/σ`, `ln(1 + max/σ)` |
//! | history | 1 | `ln(1 + samples) / ln(1 + 2304)` (2304: 8 days of 5-minute samples) |
//! | time into task | 2 + 2P | `s / scale`, `ln(1+s) / ln(1+scale)`, then `sin`, `cos` of `2πs / p` per period `p` |
//! | calendar | 4 | `sin`, `cos` of the UTC time of day and of the time of week (from Monday 00:00) at `task_start + s`; each pair 0 when the model's [`TimeEncoding`] has it off (training data spanning fewer than 3 days, or 3 weeks) |
//!
//! The network's output is one column per quantile level, ascending, in
//! units of the series' scale: a value is `output × σ`, floored at 0.
//!
//! Layout 1 (one scale per resource, no context, no calendar) is refused
//! with a message saying to retrain: its rows cannot be built from what a
//! layout-2 query carries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The feature layout this crate encodes.
pub const FEATURE_LAYOUT: u32 = 2;
/// ONNX metadata key holding the [`ModelSpec`] as JSON.
pub const METADATA_KEY: &str = "headroom.model";
/// Name of the graph's input: `[batch, width]` `f32` features.
pub const INPUT: &str = "features";
/// Name of the graph's output: `[batch, quantiles]` `f32`, scaled.
pub const OUTPUT: &str = "quantiles";
/// How far back a series' context looks: 8 days, so that a weekly cycle
/// and the day before it are both inside (the trainer's definition; a
/// caller building a context should use the same window).
pub const CONTEXT_WINDOW_SECONDS: f64 = 8.0 * 86_400.0;
/// Sample count that maps the history feature to 1: 8 days at the
/// 5-minute interval of the Bitbrains traces. Larger counts go above 1.
pub const HISTORY_REFERENCE_SAMPLES: f64 = 2304.0;
/// Seconds in a day and in a week, the calendar features' periods.
const DAY: f64 = 86_400.0;
const WEEK: f64 = 7.0 * DAY;
/// The Unix epoch was a Thursday: Monday 00:00 UTC is 4 days later.
const MONDAY_OFFSET: f64 = 4.0 * DAY;

/// Why a query or a model file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// A service outside the model's vocabulary with no context to predict
    /// it from.
    #[error(
        "service {name:?} is unknown to model {version} and no context was given for its {resource}: \
         pass a SeriesContext (quantiles of its recent usage) to predict it (the model knows {known})"
    )]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The resource asked for.
        resource: String,
        /// The model's version.
        version: String,
        /// The services it knows, comma-separated.
        known: String,
    },
    /// A known service whose resource had no samples in training, asked
    /// without a context.
    #[error(
        "model {version} has no history of service {service:?} for {resource} and no context was given: \
         pass a SeriesContext (quantiles of its recent usage)"
    )]
    NoContext {
        /// The service.
        service: String,
        /// The resource.
        resource: String,
        /// The model's version.
        version: String,
    },
    /// A resource outside the model's vocabulary.
    #[error("resource {name:?} is unknown to model {version} (it knows {known})")]
    UnknownResource {
        /// The name asked for.
        name: String,
        /// The model's version.
        version: String,
        /// The resources it knows, comma-separated.
        known: String,
    },
    /// Seconds that are negative or not finite.
    #[error("seconds must be a finite number at least 0, got {0}")]
    BadSeconds(f64),
    /// A context whose numbers cannot describe usage.
    #[error("context of {service}/{resource}: {reason}")]
    BadContext {
        /// The context's service.
        service: String,
        /// The context's resource.
        resource: String,
        /// What is wrong, naming the field and its value.
        reason: String,
    },
    /// The model file's metadata is missing or malformed.
    #[error("model metadata: {0}")]
    Metadata(String),
}

/// Whether quantile levels are non-empty, ascending and inside (0, 1).
pub fn quantiles_are_valid(levels: &[f64]) -> bool {
    !levels.is_empty()
        && levels.iter().all(|q| *q > 0.0 && *q < 1.0)
        && levels.windows(2).all(|w| w[0] < w[1])
}

/// Quantiles of one series' recent usage (its own history, e.g. the
/// [`CONTEXT_WINDOW_SECONDS`] before the task), in the resource's unit.
/// It tells the model the series' level, so targets can be scaled per
/// series and a service the model never saw can be predicted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeriesContext {
    /// Median of the recent samples.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest recent sample.
    pub max: f64,
    /// How many samples the quantiles come from (how much to trust them).
    pub samples: u64,
}

impl SeriesContext {
    /// The context of raw samples (nearest-rank quantiles); values that are
    /// not finite are left out, and none left gives `None`. Allocates one
    /// copy.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        Self::of_mut(&mut v)
    }

    /// [`SeriesContext::of`] for finite values the caller lets be
    /// reordered: linear-time selection, no allocation (the trainer's path,
    /// which builds one context per task and series). `None` when empty.
    pub fn of_mut(values: &mut [f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let rank = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (i50, i90, i99) = (rank(0.5), rank(0.9), rank(0.99));
        // Each selection leaves everything above its rank to its right,
        // so the next one searches only that part.
        let mut from = 0;
        for i in [i50, i90, i99] {
            if i >= from {
                values[from..].select_nth_unstable_by(i - from, f64::total_cmp);
                from = i + 1;
            }
        }
        let max = values[i99..].iter().copied().fold(f64::MIN, f64::max);
        Some(Self {
            p50: values[i50],
            p90: values[i90],
            p99: values[i99],
            max,
            samples: n as u64,
        })
    }

    /// The series' robust scale σ = max(p90, p99 / 10, `floor`), in the
    /// resource's unit. DeepAR (Salinas et al., "DeepAR: Probabilistic
    /// forecasting with autoregressive recurrent networks", IJF 2020, §3.3)
    /// divides each series by 1 + its mean over the conditioning range; a
    /// quantile is used here instead so that one spike does not set the
    /// scale, `p99 / 10` so that a mostly idle, bursty series (p90 ≈ 0)
    /// still scales to its bursts' order, and the resource's `floor`
    /// (see [`default_floor`]) so that an idle series never divides by 0.
    pub fn scale(&self, floor: f64) -> f64 {
        self.p90.max(self.p99 / 10.0).max(floor)
    }

    /// Refuses numbers that cannot describe usage: not finite, negative,
    /// quantiles out of order, or no samples. The reason names the field
    /// and its value.
    pub fn check(&self) -> Result<(), String> {
        let fields = [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("max", self.max),
        ];
        if let Some((name, v)) = fields.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(format!(
                "{name} must be a finite number at least 0, got {v}"
            ));
        }
        if let Some(w) = fields.windows(2).find(|w| w[1].1 < w[0].1) {
            return Err(format!(
                "{} {} is below {} {}; quantiles must ascend up to max",
                w[1].0, w[1].1, w[0].0, w[0].1
            ));
        }
        if self.samples == 0 {
            return Err("samples must be at least 1, got 0".into());
        }
        Ok(())
    }
}

/// The smallest scale a series of `resource` gets (see
/// [`SeriesContext::scale`]): 1 millicore of cpu (the Kubernetes unit),
/// 1 MiB of memory, 1 KiB/s of disk or network; 1 for other resources.
pub fn default_floor(resource: &str) -> f64 {
    match resource {
        "cpu" => 1e-3,
        "memory" => 1_048_576.0,
        "disk_read" | "disk_write" | "net_rx" | "net_tx" => 1024.0,
        _ => 1.0,
    }
}

/// One resource of the model, with how its series' scales are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Wire name (`cpu`, `memory`, ...).
    pub name: String,
    /// Unit of its values.
    pub unit: String,
    /// Smallest series scale, in the unit ([`SeriesContext::scale`]).
    pub floor: f64,
    /// Mean of `ln σ` over the training series of this resource: centres
    /// the scale feature so cores and bytes share one input column.
    pub log_scale_centre: f64,
    /// Standard deviation of `ln σ` over those series (at least 1).
    pub log_scale_spread: f64,
    /// Smallest `ln σ` seen in training. A smaller series is encoded as if
    /// it were this size (its σ still scales the output), so the network
    /// is never asked to extrapolate in size: beyond the sizes it saw, it
    /// predicts usage / σ as for the nearest size it saw.
    pub log_scale_min: f64,
    /// Largest `ln σ` seen in training; likewise for larger series.
    pub log_scale_max: f64,
}

/// How seconds into the task are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeEncoding {
    /// Seconds that map to 1.0 (the longest task seen in training).
    pub scale_seconds: f64,
    /// Periods, in seconds, encoded as a sine and a cosine each.
    #[serde(default)]
    pub periods_seconds: Vec<f64>,
    /// Whether the time-of-day features are read; when not, they are 0.
    /// A trainer turns a calendar period on only when its data covers it
    /// [`CALENDAR_CYCLES`] times: from less, the network memorises when
    /// the few tasks it saw ran instead of learning a daily pattern, and a
    /// task at another hour is predicted off. Models that predate the
    /// field read it as on.
    #[serde(default = "on")]
    pub time_of_day: bool,
    /// Whether the time-of-week features are read (as
    /// [`TimeEncoding::time_of_day`]).
    #[serde(default = "on")]
    pub time_of_week: bool,
}

fn on() -> bool {
    true
}

/// Cycles of a calendar period the training data must span for its
/// features to be on ([`TimeEncoding::time_of_day`]): three days for the
/// time of day, three weeks for the time of week.
pub const CALENDAR_CYCLES: f64 = 3.0;

impl TimeEncoding {
    /// The calendar features a span of training data (seconds from its
    /// first to its last sample) supports: `(time of day, time of week)`.
    pub fn calendar_for_span(span_seconds: f64) -> (bool, bool) {
        (
            span_seconds >= CALENDAR_CYCLES * DAY,
            span_seconds >= CALENDAR_CYCLES * WEEK,
        )
    }
}

/// A validation metric measured at training time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Metric name, e.g. `pinball_loss`, `coverage_p90`.
    pub name: String,
    /// Resource it applies to; empty for the whole model.
    #[serde(default)]
    pub resource: String,
    /// The value.
    pub value: f64,
}

/// Everything needed to encode inputs for, and decode outputs of, one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model version, set at training time.
    pub version: String,
    /// Layout of the input row; see the module docs.
    pub feature_layout: u32,
    /// Service vocabulary, in feature order.
    pub services: Vec<String>,
    /// Resource vocabulary, in feature order.
    pub resources: Vec<ResourceSpec>,
    /// Quantile levels of the output columns, ascending.
    pub quantiles: Vec<f64>,
    /// Time encoding.
    pub time: TimeEncoding,
    /// Start of the training data's time window.
    pub trained_from: Option<DateTime<Utc>>,
    /// End of the training data's time window.
    pub trained_to: Option<DateTime<Utc>>,
    /// Per service then per resource (vocabulary order), the context of
    /// the series' last [`CONTEXT_WINDOW_SECONDS`] of training data; `None`
    /// where the series had no samples. Used when a query brings none.
    #[serde(default)]
    pub contexts: Vec<Vec<Option<SeriesContext>>>,
    /// Validation metrics on held-out tasks.
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Ids of the tasks held out of training (validation): usage the
    /// network never fitted, on which the allocator calibrates its
    /// violation target (split conformal prediction).
    #[serde(default)]
    pub held_out_tasks: Vec<String>,
}

/// Refuses seconds into a task that are negative, NaN or infinite.
pub fn check_seconds(seconds: f64) -> Result<(), Error> {
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(())
    } else {
        Err(Error::BadSeconds(seconds))
    }
}

/// Seconds since the Unix epoch of a time, as the calendar features take it.
pub fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) * 1e-9
}

/// One point query, by name.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The task's services (its mix); the predicted service is part of it
    /// whether listed or not. Services the model never saw have no column
    /// and are left out.
    pub task_services: &'a [String],
    /// The service whose usage is predicted.
    pub service: &'a str,
    /// The resource.
    pub resource: &'a str,
    /// Seconds into the task.
    pub seconds: f64,
    /// The series' recent usage; `None` takes the one stored in the model
    /// (refused for a series the model has none of).
    pub context: Option<&'a SeriesContext>,
    /// When the task started: the calendar features are read at
    /// `task_start + seconds`.
    pub task_start: DateTime<Utc>,
}

/// A query with its names resolved to vocabulary indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Indices of the mix's known services (sorted, unique, including
    /// `service` when known).
    pub mix: Vec<usize>,
    /// Index of the service; `None` for a service outside the vocabulary.
    pub service: Option<usize>,
    /// Index of the resource.
    pub resource: usize,
    /// The series' context (given or stored).
    pub context: SeriesContext,
    /// Task start, seconds since the Unix epoch.
    pub task_start: f64,
    /// Seconds into the task.
    pub seconds: f64,
}

/// One row's inputs by index: what [`ModelSpec::encode_row`] writes.
#[derive(Debug, Clone, Copy)]
pub struct RowInput<'a> {
    /// Indices of the mix's known services (`service` among them when known).
    pub mix: &'a [usize],
    /// Index of the service; `None` for a service outside the vocabulary.
    pub service: Option<usize>,
    /// Index of the resource.
    pub resource: usize,
    /// The series' context.
    pub context: &'a SeriesContext,
    /// Task start, seconds since the Unix epoch.
    pub task_start: f64,
    /// Seconds into the task.
    pub seconds: f64,
}

impl ModelSpec {
    /// A small spec (services api, db, web; resources cpu, memory;
    /// quantiles 0.5, 0.9, 0.99; a context for every series but db's
    /// memory) for tests and examples.
    pub fn example() -> ModelSpec {
        let ctx = |p50: f64| {
            Some(SeriesContext {
                p50,
                p90: 2.0 * p50,
                p99: 3.0 * p50,
                max: 4.0 * p50,
                samples: 100,
            })
        };
        ModelSpec {
            version: "t1".into(),
            feature_layout: FEATURE_LAYOUT,
            services: vec!["api".into(), "db".into(), "web".into()],
            resources: vec![
                ResourceSpec {
                    name: "cpu".into(),
                    unit: "cores".into(),
                    floor: default_floor("cpu"),
                    log_scale_centre: 0.0,
                    log_scale_spread: 1.0,
                    log_scale_min: -5.0,
                    log_scale_max: 5.0,
                },
                ResourceSpec {
                    name: "memory".into(),
                    unit: "bytes".into(),
                    floor: default_floor("memory"),
                    log_scale_centre: 20.0,
                    log_scale_spread: 2.0,
                    log_scale_min: 14.0,
                    log_scale_max: 26.0,
                },
            ],
            quantiles: vec![0.5, 0.9, 0.99],
            time: TimeEncoding {
                scale_seconds: 600.0,
                periods_seconds: vec![60.0],
                time_of_day: true,
                time_of_week: true,
            },
            trained_from: None,
            trained_to: None,
            contexts: vec![
                vec![ctx(0.5), ctx(1e8)],
                vec![ctx(1.0), None],
                vec![ctx(0.25), ctx(5e8)],
            ],
            metrics: vec![],
            held_out_tasks: vec![],
        }
    }

    /// Width of one input row.
    pub fn width(&self) -> usize {
        2 * self.services.len()
            + self.resources.len()
            + 6
            + 2
            + 2 * self.time.periods_seconds.len()
            + 4
    }

    /// Parses the JSON stored under [`METADATA_KEY`] and checks it.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        // The layout first: an older model's fields differ, and "retrain"
        // says more than a missing field would.
        #[derive(Deserialize)]
        struct Layout {
            feature_layout: Option<u32>,
        }
        let layout: Layout =
            serde_json::from_str(json).map_err(|e| Error::Metadata(e.to_string()))?;
        check_layout(layout.feature_layout.unwrap_or(0))?;
        let spec: Self = serde_json::from_str(json).map_err(|e| Error::Metadata(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The JSON to store under [`METADATA_KEY`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a spec always serializes")
    }

    /// Finds the spec among an ONNX model's metadata entries.
    pub fn from_metadata(props: &HashMap<String, String>) -> Result<Self, Error> {
        let json = props.get(METADATA_KEY).ok_or_else(|| {
            Error::Metadata(format!("no {METADATA_KEY:?} entry: not a Headroom model"))
        })?;
        Self::from_json(json)
    }

    /// Checks what a served model relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Metadata(m));
        check_layout(self.feature_layout)?;
        if self.services.is_empty() || self.resources.is_empty() {
            return bad("empty service or resource vocabulary".into());
        }
        if !quantiles_are_valid(&self.quantiles) {
            return bad(format!(
                "quantile levels {:?} are not ascending in (0, 1)",
                self.quantiles
            ));
        }
        if let Some(r) = self.resources.iter().find(|r| {
            !(r.floor.is_finite()
                && r.floor > 0.0
                && r.log_scale_centre.is_finite()
                && r.log_scale_spread.is_finite()
                && r.log_scale_spread > 0.0
                && r.log_scale_min.is_finite()
                && r.log_scale_max.is_finite()
                && r.log_scale_min <= r.log_scale_max)
        }) {
            return bad(format!(
                "resource {} has floor {}, log-scale centre {}, spread {} and range [{}, {}]",
                r.name,
                r.floor,
                r.log_scale_centre,
                r.log_scale_spread,
                r.log_scale_min,
                r.log_scale_max
            ));
        }
        if !(self.time.scale_seconds.is_finite() && self.time.scale_seconds > 0.0)
            || self
                .time
                .periods_seconds
                .iter()
                .any(|p| !(p.is_finite() && *p > 0.0))
        {
            return bad("time encoding has a scale or period that is not positive".into());
        }
        if self.contexts.len() != self.services.len()
            || self
                .contexts
                .iter()
                .any(|c| c.len() != self.resources.len())
        {
            return bad(format!(
                "stored contexts are not one per service ({}) and resource ({})",
                self.services.len(),
                self.resources.len()
            ));
        }
        for (s, per) in self.services.iter().zip(&self.contexts) {
            for (r, c) in self.resources.iter().zip(per) {
                if let Some(Err(reason)) = c.as_ref().map(SeriesContext::check) {
                    return bad(format!("stored context of {s}/{}: {reason}", r.name));
                }
            }
        }
        Ok(())
    }

    /// Index of a service in the vocabulary, if it is there.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s == name)
    }

    /// Index of a resource, or a clear error naming the vocabulary.
    pub fn resource_index(&self, name: &str) -> Result<usize, Error> {
        self.resources
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| Error::UnknownResource {
                name: name.to_string(),
                version: self.version.clone(),
                known: self
                    .resources
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The context a series is predicted with: `given` (checked) if any,
    /// else the one stored for a known service, else an error saying to
    /// pass one.
    pub fn context_for(
        &self,
        service_name: &str,
        service: Option<usize>,
        resource: usize,
        given: Option<&SeriesContext>,
    ) -> Result<SeriesContext, Error> {
        let resource_name = &self.resources[resource].name;
        if let Some(c) = given {
            c.check().map_err(|reason| Error::BadContext {
                service: service_name.to_string(),
                resource: resource_name.clone(),
                reason,
            })?;
            return Ok(*c);
        }
        match service {
            None => Err(Error::UnknownService {
                name: service_name.to_string(),
                resource: resource_name.clone(),
                version: self.version.clone(),
                known: self.services.join(", "),
            }),
            Some(s) => self.contexts[s][resource].ok_or_else(|| Error::NoContext {
                service: service_name.to_string(),
                resource: resource_name.clone(),
                version: self.version.clone(),
            }),
        }
    }

    /// Resolves a query's names and context; refuses a service the model
    /// never saw unless it comes with a context.
    pub fn resolve(&self, query: &Query<'_>) -> Result<Encoded, Error> {
        check_seconds(query.seconds)?;
        let resource = self.resource_index(query.resource)?;
        let service = self.service_index(query.service);
        let context = self.context_for(query.service, service, resource, query.context)?;
        let mut mix: Vec<usize> = query
            .task_services
            .iter()
            .filter_map(|s| self.service_index(s))
            .chain(service)
            .collect();
        mix.sort_unstable();
        mix.dedup();
        Ok(Encoded {
            mix,
            service,
            resource,
            context,
            task_start: unix_seconds(query.task_start),
            seconds: query.seconds,
        })
    }

    /// Writes one input row (`out.len() == self.width()`).
    pub fn encode_into(&self, q: &Encoded, out: &mut [f32]) {
        self.encode_row(
            &RowInput {
                mix: &q.mix,
                service: q.service,
                resource: q.resource,
                context: &q.context,
                task_start: q.task_start,
                seconds: q.seconds,
            },
            out,
        );
    }

    /// The scale σ of a series of resource `resource` with context `c`.
    pub fn series_scale(&self, resource: usize, c: &SeriesContext) -> f64 {
        c.scale(self.resources[resource].floor)
    }

    /// Writes one input row from vocabulary indices; the trainer's hot
    /// path, free of allocations.
    pub fn encode_row(&self, q: &RowInput<'_>, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.width());
        out.fill(0.0);
        let s = self.services.len();
        for &m in q.mix {
            out[m] = 1.0;
        }
        if let Some(service) = q.service {
            out[s + service] = 1.0;
        }
        out[2 * s + q.resource] = 1.0;
        let mut at = 2 * s + self.resources.len();
        let r = &self.resources[q.resource];
        let c = q.context;
        let scale = c.scale(r.floor);
        let size = scale.ln().clamp(r.log_scale_min, r.log_scale_max);
        out[at] = ((size - r.log_scale_centre) / r.log_scale_spread) as f32;
        out[at + 1] = (c.p50 / scale) as f32;
        out[at + 2] = (c.p90 / scale) as f32;
        out[at + 3] = (c.p99 / scale) as f32;
        out[at + 4] = (c.max / scale).ln_1p() as f32;
        out[at + 5] = ((c.samples as f64).ln_1p() / HISTORY_REFERENCE_SAMPLES.ln_1p()) as f32;
        at += 6;
        let seconds = q.seconds;
        let span = self.time.scale_seconds;
        out[at] = (seconds / span) as f32;
        out[at + 1] = (seconds.ln_1p() / span.ln_1p()) as f32;
        at += 2;
        for p in &self.time.periods_seconds {
            let angle = std::f64::consts::TAU * seconds / p;
            out[at] = angle.sin() as f32;
            out[at + 1] = angle.cos() as f32;
            at += 2;
        }
        let t = q.task_start + seconds;
        let day = std::f64::consts::TAU * t.rem_euclid(DAY) / DAY;
        let week = std::f64::consts::TAU * (t - MONDAY_OFFSET).rem_euclid(WEEK) / WEEK;
        if self.time.time_of_day {
            out[at] = day.sin() as f32;
            out[at + 1] = day.cos() as f32;
        }
        if self.time.time_of_week {
            out[at + 2] = week.sin() as f32;
            out[at + 3] = week.cos() as f32;
        }
    }

    /// Encodes a batch of queries into one row-major `[n, width]` buffer.
    pub fn encode(&self, queries: &[Query<'_>]) -> Result<Vec<f32>, Error> {
        let w = self.width();
        let mut out = vec![0.0; queries.len() * w];
        for (q, row) in queries.iter().zip(out.chunks_exact_mut(w)) {
            self.encode_into(&self.resolve(q)?, row);
        }
        Ok(out)
    }

    /// Turns one output row into usage in the resource's unit: multiplied
    /// by the series' `scale` ([`ModelSpec::series_scale`]), floored at 0,
    /// and kept ascending whatever the graph produced.
    pub fn decode(&self, scale: f64, row: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(row.len());
        self.decode_into(scale, row, &mut out);
        out
    }

    /// [`ModelSpec::decode`], appending to `out`.
    pub fn decode_into(&self, scale: f64, row: &[f32], out: &mut Vec<f64>) {
        let mut last = 0.0_f64;
        out.extend(row.iter().map(|v| {
            last = last.max(f64::from(*v) * scale);
            last
        }));
    }
}

/// Refuses any layout but [`FEATURE_LAYOUT`], telling to retrain.
fn check_layout(layout: u32) -> Result<(), Error> {
    if layout == FEATURE_LAYOUT {
        return Ok(());
    }
    Err(Error::Metadata(format!(
        "feature layout {layout} is not the supported layout {FEATURE_LAYOUT} \
         (per-series scales, usage context, calendar features): retrain the model with this \
         version of headroom-train"
    )))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::example()
    }

    /// Nearest-rank quantile of sorted values: the smallest value with at
    /// least `q` of the values at or below it.
    fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// Monday 2024-01-01 00:00 UTC.
    fn monday() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn query<'a>(mix: &'a [String], service: &'a str, resource: &'a str) -> Query<'a> {
        Query {
            task_services: mix,
            service,
            resource,
            seconds: 150.0,
            context: None,
            task_start: monday(),
        }
    }

    #[test]
    fn a_query_becomes_the_documented_row() {
        let s = spec();
        let mix = vec!["web".to_string(), "billing".to_string()];
        // Monday 06:00 plus 150 s.
        let q = Query {
            task_start: monday() + chrono::Duration::hours(6),
            ..query(&mix, "api", "memory")
        };
        let row = s.encode(std::slice::from_ref(&q)).unwrap();
        assert_eq!(row.len(), s.width());
        assert_eq!(s.width(), 3 + 3 + 2 + 6 + 4 + 4);
        assert_eq!(
            &row[..3],
            &[1.0, 0.0, 1.0],
            "mix is web plus the service itself; billing has no column"
        );
        assert_eq!(&row[3..6], &[1.0, 0.0, 0.0]);
        assert_eq!(&row[6..8], &[0.0, 1.0]);
        // api's memory: p50 1e8, p90 2e8, p99 3e8, max 4e8, σ = p90.
        let want_scale = ((2e8_f64).ln() - 20.0) / 2.0;
        assert!((row[8] - want_scale as f32).abs() < 1e-6, "{}", row[8]);
        assert!((row[9] - 0.5).abs() < 1e-6);
        assert!((row[10] - 1.0).abs() < 1e-6);
        assert!((row[11] - 1.5).abs() < 1e-6);
        assert!((row[12] - 3.0_f32.ln()).abs() < 1e-6);
        assert!((row[13] - (101.0_f64.ln() / 2305.0_f64.ln()) as f32).abs() < 1e-6);
        assert!((row[14] - 0.25).abs() < 1e-6);
        assert!((row[15] - (151.0_f64.ln() / 601.0_f64.ln()) as f32).abs() < 1e-6);
        // 150 s is two and a half periods of 60 s: sin 0, cos -1.
        assert!(row[16].abs() < 1e-5 && (row[17] + 1.0).abs() < 1e-5);
        // 06:02:30 is a quarter of a day and a bit: sin ≈ 1, cos ≈ 0.
        let day = std::f64::consts::TAU * (6.0 * 3600.0 + 150.0) / DAY;
        assert!((row[18] - day.sin() as f32).abs() < 1e-5);
        assert!((row[19] - day.cos() as f32).abs() < 1e-5);
        // Monday morning is just past the start of the week.
        let week = std::f64::consts::TAU * (6.0 * 3600.0 + 150.0) / WEEK;
        assert!((row[20] - week.sin() as f32).abs() < 1e-5);
        assert!((row[21] - week.cos() as f32).abs() < 1e-5);
        // A calendar period the training data did not cover is left at 0.
        let mut off = spec();
        off.time.time_of_week = false;
        let row = off.encode(std::slice::from_ref(&q)).unwrap();
        assert!((row[18] - day.sin() as f32).abs() < 1e-5);
        assert_eq!(&row[20..22], [0.0, 0.0]);
        off.time.time_of_day = false;
        let row = off.encode(&[q]).unwrap();
        assert_eq!(&row[18..22], [0.0; 4]);
    }

    #[test]
    fn calendar_features_need_three_cycles_of_data() {
        let day = 86_400.0;
        assert_eq!(TimeEncoding::calendar_for_span(2.9 * day), (false, false));
        assert_eq!(TimeEncoding::calendar_for_span(3.0 * day), (true, false));
        assert_eq!(TimeEncoding::calendar_for_span(21.0 * day), (true, true));
        // A model written before the flags existed reads them as on.
        let old: TimeEncoding =
            serde_json::from_str(r#"{"scale_seconds": 600.0, "periods_seconds": []}"#).unwrap();
        assert!(old.time_of_day && old.time_of_week);
    }

    #[test]
    fn an_unknown_service_needs_a_context_and_then_has_no_identity() {
        let s = spec();
        let mix = vec!["web".to_string()];
        let e = s.encode(&[query(&mix, "billing", "cpu")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service \"billing\" is unknown to model t1 and no context was given for its cpu: \
             pass a SeriesContext (quantiles of its recent usage) to predict it \
             (the model knows api, db, web)"
        );
        let ctx = SeriesContext {
            p50: 3.0,
            p90: 4.0,
            p99: 5.0,
            max: 6.0,
            samples: 10,
        };
        let q = Query {
            context: Some(&ctx),
            ..query(&mix, "billing", "cpu")
        };
        let e = s.resolve(&q).unwrap();
        assert_eq!(e.service, None);
        assert_eq!(e.mix, [2]);
        let row = s.encode(&[q]).unwrap();
        assert_eq!(&row[3..6], &[0.0, 0.0, 0.0], "no service column is set");
        assert!((row[10] - 1.0).abs() < 1e-6, "p90 / σ with σ = p90 = 4");
        // A known series without a stored context is refused the same way.
        let e = s.encode(&[query(&mix, "db", "memory")]).unwrap_err();
        assert!(
            matches!(e, Error::NoContext { ref service, .. } if service == "db"),
            "{e}"
        );
    }

    #[test]
    fn bad_queries_are_refused_naming_the_field() {
        let s = spec();
        let q = query(&[], "api", "cpu");
        let e = s
            .encode(&[Query {
                resource: "gpu",
                ..q
            }])
            .unwrap_err();
        assert!(
            matches!(e, Error::UnknownResource { ref name, .. } if name == "gpu"),
            "{e}"
        );
        let e = s.encode(&[Query { seconds: -1.0, ..q }]).unwrap_err();
        assert_eq!(e, Error::BadSeconds(-1.0));
        let crossing = SeriesContext {
            p50: 2.0,
            p90: 1.0,
            p99: 3.0,
            max: 3.0,
            samples: 5,
        };
        let e = s
            .encode(&[Query {
                context: Some(&crossing),
                ..q
            }])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "context of api/cpu: p90 1 is below p50 2; quantiles must ascend up to max"
        );
        let nan = SeriesContext {
            max: f64::NAN,
            ..crossing
        };
        assert!(nan.check().unwrap_err().contains("max must be a finite"));
        let empty = SeriesContext {
            p90: 2.0,
            samples: 0,
            ..crossing
        };
        assert_eq!(
            empty.check().unwrap_err(),
            "samples must be at least 1, got 0"
        );
    }

    #[test]
    fn a_context_of_raw_values_uses_nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let c = SeriesContext::of(&v).unwrap();
        assert_eq!(
            (c.p50, c.p90, c.p99, c.max, c.samples),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(SeriesContext::of(&[f64::NAN]), None);
        let c = SeriesContext::of(&[7.0, f64::INFINITY]).unwrap();
        assert_eq!((c.p50, c.max, c.samples), (7.0, 7.0, 1));
        // σ = max(p90, p99 / 10, floor).
        assert_eq!(c.scale(1.0), 7.0);
        assert_eq!(c.scale(10.0), 10.0);
        let bursty = SeriesContext {
            p50: 0.0,
            p90: 0.0,
            p99: 50.0,
            max: 80.0,
            samples: 100,
        };
        assert_eq!(bursty.scale(1.0), 5.0);
    }

    #[test]
    fn metadata_round_trips_and_bad_metadata_is_refused() {
        let s = spec();
        let props = HashMap::from([(METADATA_KEY.to_string(), s.to_json())]);
        assert_eq!(ModelSpec::from_metadata(&props).unwrap(), s);
        assert!(ModelSpec::from_metadata(&HashMap::new()).is_err());
        let mut crossing = s.clone();
        crossing.quantiles = vec![0.9, 0.5];
        assert!(ModelSpec::from_json(&crossing.to_json()).is_err());
        let mut ragged = s.clone();
        ragged.contexts[1].pop();
        let e = ModelSpec::from_json(&ragged.to_json()).unwrap_err();
        assert!(e.to_string().contains("one per service"), "{e}");
        let mut layout = s;
        layout.feature_layout = 99;
        let e = ModelSpec::from_json(&layout.to_json()).unwrap_err();
        assert!(e.to_string().contains("feature layout 99"), "{e}");
    }

    #[test]
    fn a_layout_1_model_is_refused_with_a_call_to_retrain() {
        // The metadata of a model written before per-series scales.
        let old = r#"{"version":"old","feature_layout":1,"services":["api"],
            "resources":[{"name":"cpu","unit":"cores","scale":2.0}],
            "quantiles":[0.5],"time":{"scale_seconds":600.0,"periods_seconds":[]},
            "trained_from":null,"trained_to":null,"metrics":[]}"#;
        let e = ModelSpec::from_json(old).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("feature layout 1 is not the supported layout 2")
                && msg.contains("retrain"),
            "{msg}"
        );
    }

    proptest! {
        #[test]
        fn selection_gives_the_nearest_rank_quantiles_of_sorting(
            mut v in proptest::collection::vec(-1e6_f64..1e6, 1..300),
        ) {
            let c = SeriesContext::of(&v).unwrap();
            v.sort_unstable_by(f64::total_cmp);
            prop_assert_eq!(c.p50, nearest_rank(&v, 0.5));
            prop_assert_eq!(c.p90, nearest_rank(&v, 0.9));
            prop_assert_eq!(c.p99, nearest_rank(&v, 0.99));
            prop_assert_eq!(c.max, v[v.len() - 1]);
            prop_assert_eq!(c.samples, v.len() as u64);
        }

        #[test]
        fn decoded_quantiles_are_ascending_and_non_negative(
            row in proptest::collection::vec(-10.0_f32..10.0, 3),
            scale in 1e-3_f64..1e11,
        ) {
            let v = spec().decode(scale, &row);
            prop_assert!(v.iter().all(|x| *x >= 0.0));
            prop_assert!(v.windows(2).all(|w| w[0] <= w[1]));
        }

        #[test]
        fn every_row_has_exactly_one_service_and_resource(
            service in 0usize..3, resource in 0usize..2, seconds in 0.0_f64..1e6,
            start in 0.0_f64..4e9, level in 0.0_f64..1e12,
        ) {
            let s = spec();
            let context = SeriesContext { p50: level, p90: level, p99: level, max: level, samples: 1 };
            let q = Encoded {
                mix: vec![service], service: Some(service), resource, context,
                task_start: start, seconds,
            };
            let mut row = vec![f32::NAN; s.width()];
            s.encode_into(&q, &mut row);
            prop_assert_eq!(row[3..6].iter().sum::<f32>(), 1.0);
            prop_assert_eq!(row[6..8].iter().sum::<f32>(), 1.0);
            prop_assert!(row.iter().all(|v| v.is_finite()));
        }

        #[test]
        fn scaling_a_series_scales_only_its_scale_feature(
            p50 in 0.0_f64..1e3, spread in 1.0_f64..10.0, factor in 2.0_f64..1e4,
        ) {
            // Context features are ratios to σ: a series k times larger
            // (above the floor) differs only in the ln σ column, which
            // stops at the largest size seen in training (here e⁵).
            let s = spec();
            let base = SeriesContext { p50: p50 + 1.0, p90: (p50 + 1.0) * spread, p99: (p50 + 1.0) * spread * 2.0, max: (p50 + 1.0) * spread * 3.0, samples: 50 };
            let big = SeriesContext { p50: base.p50 * factor, p90: base.p90 * factor, p99: base.p99 * factor, max: base.max * factor, samples: 50 };
            let row = |c: SeriesContext| {
                let q = Encoded { mix: vec![], service: None, resource: 0, context: c, task_start: 0.0, seconds: 10.0 };
                let mut out = vec![0.0; s.width()];
                s.encode_into(&q, &mut out);
                out
            };
            let (a, b) = (row(base), row(big));
            for i in 0..a.len() {
                if i == 8 {
                    let size = |c: &SeriesContext| c.scale(1e-3).ln().clamp(-5.0, 5.0);
                    let want = size(&big) - size(&base);
                    prop_assert!((f64::from(b[i] - a[i]) - want).abs() < 1e-3);
                } else {
                    prop_assert!((a[i] - b[i]).abs() < 1e-4, "column {}: {} vs {}", i, a[i], b[i]);
                }
            }
        }
    }
}
