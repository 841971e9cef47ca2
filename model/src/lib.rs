//! The usage model's contract, shared by the trainer that writes a
//! `model.onnx` and the predictor that serves it: how a query becomes the
//! network's input row, and how the network's output becomes usage.
//!
//! Everything here travels inside the ONNX file as one metadata entry
//! ([`METADATA_KEY`], JSON), so a model is never served with an encoding
//! other than the one it was trained with.
//!
//! Feature layout 1, one `f32` row per query, in this order:
//!
//! | block | width | value |
//! | --- | --- | --- |
//! | task mix | services | 1 for every service of the task (multi-hot) |
//! | service | services | 1 for the predicted service (one-hot) |
//! | resource | resources | 1 for the predicted resource (one-hot) |
//! | time | 2 + 2 × periods | `s / scale`, `ln(1+s) / ln(1+scale)`, then `sin`, `cos` of `2πs / p` per period `p` |
//!
//! The network's output is one column per quantile level, ascending, in
//! units of the resource's `scale`: a value is `output × scale`, floored at 0.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The feature layout this crate encodes.
pub const FEATURE_LAYOUT: u32 = 1;
/// ONNX metadata key holding the [`ModelSpec`] as JSON.
pub const METADATA_KEY: &str = "headroom.model";
/// Name of the graph's input: `[batch, width]` `f32` features.
pub const INPUT: &str = "features";
/// Name of the graph's output: `[batch, quantiles]` `f32`, scaled.
pub const OUTPUT: &str = "quantiles";

/// Why a query or a model file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// A service outside the model's vocabulary.
    #[error("service {name:?} is unknown to model {version} (it knows {known})")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The model's version.
        version: String,
        /// The services it knows, comma-separated.
        known: String,
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

/// One resource of the model, with the scale its targets were divided by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Wire name (`cpu`, `memory`, ...).
    pub name: String,
    /// Unit of its values.
    pub unit: String,
    /// Targets were divided by this so that cores and bytes train together.
    pub scale: f64,
}

/// How seconds into the task are encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeEncoding {
    /// Seconds that map to 1.0 (the longest task seen in training).
    pub scale_seconds: f64,
    /// Periods, in seconds, encoded as a sine and a cosine each.
    #[serde(default)]
    pub periods_seconds: Vec<f64>,
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

/// One point query, by name.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The task's services (its mix); the predicted service is part of it
    /// whether listed or not.
    pub task_services: &'a [String],
    /// The service whose usage is predicted.
    pub service: &'a str,
    /// The resource.
    pub resource: &'a str,
    /// Seconds into the task.
    pub seconds: f64,
}

/// A query with its names resolved to vocabulary indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Indices of the mix's services (sorted, unique, including `service`).
    pub mix: Vec<usize>,
    /// Index of the service.
    pub service: usize,
    /// Index of the resource.
    pub resource: usize,
    /// Seconds into the task.
    pub seconds: f64,
}

impl ModelSpec {
    /// A small spec (services api, db, web; resources cpu, memory;
    /// quantiles 0.5, 0.9, 0.99) for tests and examples.
    pub fn example() -> ModelSpec {
        ModelSpec {
            version: "t1".into(),
            feature_layout: FEATURE_LAYOUT,
            services: vec!["api".into(), "db".into(), "web".into()],
            resources: vec![
                ResourceSpec {
                    name: "cpu".into(),
                    unit: "cores".into(),
                    scale: 2.0,
                },
                ResourceSpec {
                    name: "memory".into(),
                    unit: "bytes".into(),
                    scale: 1e9,
                },
            ],
            quantiles: vec![0.5, 0.9, 0.99],
            time: TimeEncoding {
                scale_seconds: 600.0,
                periods_seconds: vec![60.0],
            },
            trained_from: None,
            trained_to: None,
            metrics: vec![],
            held_out_tasks: vec![],
        }
    }

    /// Width of one input row.
    pub fn width(&self) -> usize {
        2 * self.services.len() + self.resources.len() + 2 + 2 * self.time.periods_seconds.len()
    }

    /// Parses the JSON stored under [`METADATA_KEY`] and checks it.
    pub fn from_json(json: &str) -> Result<Self, Error> {
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
        if self.feature_layout != FEATURE_LAYOUT {
            return bad(format!(
                "feature layout {} is not the supported layout {FEATURE_LAYOUT}",
                self.feature_layout
            ));
        }
        if self.services.is_empty() || self.resources.is_empty() {
            return bad("empty service or resource vocabulary".into());
        }
        if !quantiles_are_valid(&self.quantiles) {
            return bad(format!(
                "quantile levels {:?} are not ascending in (0, 1)",
                self.quantiles
            ));
        }
        if let Some(r) = self
            .resources
            .iter()
            .find(|r| !(r.scale.is_finite() && r.scale > 0.0))
        {
            return bad(format!("resource {} has scale {}", r.name, r.scale));
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
        Ok(())
    }

    /// Index of a service, or a clear error naming the vocabulary.
    pub fn service_index(&self, name: &str) -> Result<usize, Error> {
        self.services
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| Error::UnknownService {
                name: name.to_string(),
                version: self.version.clone(),
                known: self.services.join(", "),
            })
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

    /// Resolves a query's names; refuses names the model never saw.
    pub fn resolve(&self, query: &Query<'_>) -> Result<Encoded, Error> {
        check_seconds(query.seconds)?;
        let service = self.service_index(query.service)?;
        let resource = self.resource_index(query.resource)?;
        let mut mix = query
            .task_services
            .iter()
            .map(|s| self.service_index(s))
            .collect::<Result<Vec<_>, _>>()?;
        mix.push(service);
        mix.sort_unstable();
        mix.dedup();
        Ok(Encoded {
            mix,
            service,
            resource,
            seconds: query.seconds,
        })
    }

    /// Writes one input row (`out.len() == self.width()`).
    pub fn encode_into(&self, q: &Encoded, out: &mut [f32]) {
        self.encode_row(&q.mix, q.service, q.resource, q.seconds, out);
    }

    /// Writes one input row from vocabulary indices (`mix` must already
    /// hold `service`); the trainer's hot path, free of allocations.
    pub fn encode_row(
        &self,
        mix: &[usize],
        service: usize,
        resource: usize,
        seconds: f64,
        out: &mut [f32],
    ) {
        debug_assert_eq!(out.len(), self.width());
        out.fill(0.0);
        let s = self.services.len();
        for &m in mix {
            out[m] = 1.0;
        }
        out[s + service] = 1.0;
        out[2 * s + resource] = 1.0;
        let t = 2 * s + self.resources.len();
        let scale = self.time.scale_seconds;
        out[t] = (seconds / scale) as f32;
        out[t + 1] = (seconds.ln_1p() / scale.ln_1p()) as f32;
        for (i, p) in self.time.periods_seconds.iter().enumerate() {
            let angle = std::f64::consts::TAU * seconds / p;
            out[t + 2 + 2 * i] = angle.sin() as f32;
            out[t + 3 + 2 * i] = angle.cos() as f32;
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

    /// Turns one output row into usage in the resource's unit: scaled back,
    /// floored at 0, and kept ascending whatever the graph produced.
    pub fn decode(&self, resource: usize, row: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(row.len());
        self.decode_into(resource, row, &mut out);
        out
    }

    /// [`ModelSpec::decode`], appending to `out`.
    pub fn decode_into(&self, resource: usize, row: &[f32], out: &mut Vec<f64>) {
        let scale = self.resources[resource].scale;
        let mut last = 0.0_f64;
        out.extend(row.iter().map(|v| {
            last = last.max(f64::from(*v) * scale);
            last
        }));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec::example()
    }

    #[test]
    fn a_query_becomes_the_documented_row() {
        let s = spec();
        let mix = vec!["web".to_string()];
        let row = s
            .encode(&[Query {
                task_services: &mix,
                service: "api",
                resource: "memory",
                seconds: 150.0,
            }])
            .unwrap();
        assert_eq!(row.len(), s.width());
        assert_eq!(
            &row[..3],
            &[1.0, 0.0, 1.0],
            "mix is web plus the service itself"
        );
        assert_eq!(&row[3..6], &[1.0, 0.0, 0.0]);
        assert_eq!(&row[6..8], &[0.0, 1.0]);
        assert!((row[8] - 0.25).abs() < 1e-6);
        assert!((row[9] - (151.0_f64.ln() / 601.0_f64.ln()) as f32).abs() < 1e-6);
        // 150 s is two and a half periods of 60 s: sin 0, cos -1.
        assert!(row[10].abs() < 1e-5 && (row[11] + 1.0).abs() < 1e-5);
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let s = spec();
        let mix = vec!["cache".to_string()];
        let q = Query {
            task_services: &mix,
            service: "api",
            resource: "cpu",
            seconds: 1.0,
        };
        let e = s.encode(&[q]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service \"cache\" is unknown to model t1 (it knows api, db, web)"
        );
        let e = s
            .encode(&[Query {
                resource: "gpu",
                task_services: &[],
                ..q
            }])
            .unwrap_err();
        assert!(
            matches!(e, Error::UnknownResource { ref name, .. } if name == "gpu"),
            "{e}"
        );
        let e = s
            .encode(&[Query {
                seconds: -1.0,
                task_services: &[],
                ..q
            }])
            .unwrap_err();
        assert_eq!(e, Error::BadSeconds(-1.0));
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
        let mut layout = s;
        layout.feature_layout = 99;
        let e = ModelSpec::from_json(&layout.to_json()).unwrap_err();
        assert!(e.to_string().contains("feature layout 99"), "{e}");
    }

    proptest! {
        #[test]
        fn decoded_quantiles_are_ascending_and_non_negative(
            row in proptest::collection::vec(-10.0_f32..10.0, 3),
            resource in 0usize..2,
        ) {
            let v = spec().decode(resource, &row);
            prop_assert!(v.iter().all(|x| *x >= 0.0));
            prop_assert!(v.windows(2).all(|w| w[0] <= w[1]));
        }

        #[test]
        fn every_row_has_exactly_one_service_and_resource(
            service in 0usize..3, resource in 0usize..2, seconds in 0.0_f64..1e6,
        ) {
            let s = spec();
            let q = Encoded { mix: vec![service], service, resource, seconds };
            let mut row = vec![f32::NAN; s.width()];
            s.encode_into(&q, &mut row);
            prop_assert_eq!(row[3..6].iter().sum::<f32>(), 1.0);
            prop_assert_eq!(row[6..8].iter().sum::<f32>(), 1.0);
            prop_assert!(row.iter().all(|v| v.is_finite()));
        }
    }
}
