//! The validation report on held-out tasks: per resource, the pinball loss
//! (in each series' own scale σ, so resources and sizes compare), the MAE
//! of the median, and the coverage of every quantile, for the model and
//! for two baselines fitted on the same training tasks:
//! - **historical max**: the service's largest value of the resource (the
//!   prototype's "take the maximum"), used for every quantile;
//! - **bucket percentile**: the service's empirical quantiles of the
//!   resource at that time into the task (buckets of `bucket_seconds`),
//!   falling back to the service's quantiles over the whole task.
//!
//! The model is also scored as if every held-out service were new to it
//! (identity hidden, only its context given): how well it transfers.

use std::{collections::HashMap, fmt::Write as _};

use headroom_model::{Metric, ModelSpec};
use serde::Serialize;

use crate::{
    Result,
    dataset::{Dataset, Split},
    network::pinball,
    train::{Trained, predict_rows, predict_rows_as, row_context},
};

/// How well one method did on one set of samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    /// Mean pinball loss over samples and quantiles, in units of each
    /// series' scale σ.
    pub pinball: f64,
    /// Mean absolute error of the median (the quantile nearest 0.5), in the
    /// resource's unit.
    pub mae_p50: f64,
    /// Share of samples at or under each quantile, in quantile order.
    pub coverage: Vec<f64>,
}

/// One resource's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceReport {
    /// Resource name.
    pub resource: String,
    /// Unit of `mae_p50`.
    pub unit: String,
    /// Held-out samples of the resource.
    pub samples: usize,
    /// The trained model.
    pub model: Scores,
    /// The service's historical maximum.
    pub historical_max: Scores,
    /// The service's per-time-bucket percentiles.
    pub bucket_percentile: Scores,
    /// The model with the service's identity hidden (a service it never
    /// saw, described by its context only).
    pub unseen_service: Scores,
}

/// The whole report, also written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Model version.
    pub version: String,
    /// Quantile levels.
    pub quantiles: Vec<f64>,
    /// Training samples.
    pub train_samples: usize,
    /// Held-out samples.
    pub validation_samples: usize,
    /// Held-out tasks.
    pub held_out_tasks: usize,
    /// Width of the baseline's time buckets.
    pub bucket_seconds: f64,
    /// Epochs run and the one kept.
    pub epochs: usize,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Training wall time, seconds.
    pub train_seconds: f64,
    /// Over all resources (pinball averaged over every held-out sample),
    /// in the order of [`METHODS`].
    pub overall: [Scores; 4],
    /// Per resource.
    pub resources: Vec<ResourceReport>,
}

/// Names of the three methods, in the order of [`Report::overall`].
pub const METHODS: [&str; 4] = [
    "model",
    "historical max",
    "bucket percentile",
    "model, unseen svc",
];

#[derive(Debug, Clone, Default)]
struct Tally {
    n: usize,
    pinball: f64,
    abs_p50: f64,
    covered: Vec<usize>,
}

impl Tally {
    fn add(&mut self, spec: &ModelSpec, scale: f64, predicted: &[f64], actual: f64) {
        let k = spec.quantiles.len();
        self.covered.resize(k, 0);
        self.n += 1;
        let mut loss = 0.0;
        for (i, (q, p)) in spec.quantiles.iter().zip(predicted).enumerate() {
            loss += pinball(*q, p / scale, actual / scale);
            if actual <= *p {
                self.covered[i] += 1;
            }
        }
        self.pinball += loss / k as f64;
        self.abs_p50 += (predicted[median_index(&spec.quantiles)] - actual).abs();
    }

    fn merge(&mut self, other: &Tally) {
        self.covered
            .resize(other.covered.len().max(self.covered.len()), 0);
        self.n += other.n;
        self.pinball += other.pinball;
        self.abs_p50 += other.abs_p50;
        for (a, b) in self.covered.iter_mut().zip(&other.covered) {
            *a += b;
        }
    }

    fn scores(&self) -> Scores {
        let n = self.n.max(1) as f64;
        Scores {
            pinball: self.pinball / n,
            mae_p50: self.abs_p50 / n,
            coverage: self.covered.iter().map(|c| *c as f64 / n).collect(),
        }
    }
}

fn median_index(quantiles: &[f64]) -> usize {
    quantiles
        .iter()
        .enumerate()
        .min_by(|a, b| (a.1 - 0.5).abs().total_cmp(&(b.1 - 0.5).abs()))
        .map_or(0, |(i, _)| i)
}

/// Nearest-rank quantiles of sorted values.
fn quantiles_of(sorted: &[f32], levels: &[f64]) -> Vec<f64> {
    levels
        .iter()
        .map(|q| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            f64::from(sorted[rank - 1])
        })
        .collect()
}

/// The two baselines, fitted on the training rows.
#[derive(Debug)]
pub struct Baselines {
    max: HashMap<(u16, u8), f64>,
    bucket: HashMap<(u16, u8, u32), Vec<f64>>,
    whole: HashMap<(u16, u8), Vec<f64>>,
    resource_max: HashMap<u8, f64>,
    bucket_seconds: f64,
}

impl Baselines {
    /// Fits both baselines on `rows` of `data`.
    pub fn fit(data: &Dataset, rows: &[usize], quantiles: &[f64], bucket_seconds: f64) -> Self {
        let mut by_bucket: HashMap<(u16, u8, u32), Vec<f32>> = HashMap::new();
        let mut by_series: HashMap<(u16, u8), Vec<f32>> = HashMap::new();
        let mut resource_max: HashMap<u8, f64> = HashMap::new();
        for &i in rows {
            let r = &data.rows[i];
            let b = (f64::from(r.seconds) / bucket_seconds) as u32;
            by_bucket
                .entry((r.service, r.resource, b))
                .or_default()
                .push(r.value);
            by_series
                .entry((r.service, r.resource))
                .or_default()
                .push(r.value);
            let m = resource_max.entry(r.resource).or_insert(f64::MIN);
            *m = m.max(f64::from(r.value));
        }
        let fit = |mut v: Vec<f32>| {
            v.sort_unstable_by(f32::total_cmp);
            quantiles_of(&v, quantiles)
        };
        let mut max = HashMap::new();
        let mut whole = HashMap::new();
        for (k, v) in by_series {
            max.insert(
                k,
                v.iter().copied().fold(f64::MIN, |m, x| m.max(f64::from(x))),
            );
            whole.insert(k, fit(v));
        }
        Self {
            max,
            bucket: by_bucket.into_iter().map(|(k, v)| (k, fit(v))).collect(),
            whole,
            resource_max,
            bucket_seconds,
        }
    }

    /// The historical max of the row's service and resource (the resource's
    /// max over every service for a service never seen in training).
    pub fn historical_max(&self, service: u16, resource: u8, k: usize) -> Vec<f64> {
        let m = self
            .max
            .get(&(service, resource))
            .or_else(|| self.resource_max.get(&resource))
            .copied()
            .unwrap_or(0.0);
        vec![m; k]
    }

    /// The per-bucket quantiles of the row's service and resource.
    pub fn bucket_percentile(
        &self,
        service: u16,
        resource: u8,
        seconds: f32,
        k: usize,
    ) -> Vec<f64> {
        let b = (f64::from(seconds) / self.bucket_seconds) as u32;
        self.bucket
            .get(&(service, resource, b))
            .or_else(|| self.whole.get(&(service, resource)))
            .cloned()
            .unwrap_or_else(|| self.historical_max(service, resource, k))
    }
}

/// Scores the model and both baselines on the held-out rows.
pub fn evaluate(data: &Dataset, trained: &Trained, bucket_seconds: f64) -> Result<Report> {
    let spec = &trained.spec;
    let split: &Split = &trained.split;
    let k = spec.quantiles.len();
    let baselines = Baselines::fit(data, &split.train, &spec.quantiles, bucket_seconds);
    let predicted = predict_rows(&trained.net, data, spec, &split.validation)?;
    let unseen = predict_rows_as(&trained.net, data, spec, &split.validation, true)?;
    let mut tallies = vec![<[Tally; 4]>::default(); spec.resources.len()];
    for (j, &i) in split.validation.iter().enumerate() {
        let r = &data.rows[i];
        let res = r.resource as usize;
        let actual = f64::from(r.value);
        let (_, scale) = row_context(data, spec, i);
        let model = spec.decode(scale, &predicted[j * k..(j + 1) * k]);
        let max = baselines.historical_max(r.service, r.resource, k);
        let bucket = baselines.bucket_percentile(r.service, r.resource, r.seconds, k);
        let new = spec.decode(scale, &unseen[j * k..(j + 1) * k]);
        for (t, p) in tallies[res].iter_mut().zip([model, max, bucket, new]) {
            t.add(spec, scale, &p, actual);
        }
    }
    let mut overall = <[Tally; 4]>::default();
    for per in &tallies {
        for (o, t) in overall.iter_mut().zip(per) {
            o.merge(t);
        }
    }
    Ok(Report {
        version: spec.version.clone(),
        quantiles: spec.quantiles.clone(),
        train_samples: split.train.len(),
        validation_samples: split.validation.len(),
        held_out_tasks: split.held_out.len(),
        bucket_seconds,
        epochs: trained.history.len(),
        best_epoch: trained.best_epoch,
        train_seconds: trained.seconds,
        overall: overall.map(|t| t.scores()),
        resources: spec
            .resources
            .iter()
            .zip(&tallies)
            .map(|(r, [m, x, b, u])| ResourceReport {
                resource: r.name.clone(),
                unit: r.unit.clone(),
                samples: m.n,
                model: m.scores(),
                historical_max: x.scores(),
                bucket_percentile: b.scores(),
                unseen_service: u.scores(),
            })
            .collect(),
    })
}

fn level(q: f64) -> String {
    format!("p{}", (q * 100.0 * 10.0).round() / 10.0)
}

impl Report {
    /// The metrics stored in the model's metadata.
    pub fn metrics(&self) -> Vec<Metric> {
        let metric = |name: String, resource: &str, value: f64| Metric {
            name,
            resource: resource.to_string(),
            value,
        };
        let mut out = Vec::new();
        let mut push = |resource: &str, s: &Scores, base: [&Scores; 3]| {
            out.push(metric("pinball_loss".into(), resource, s.pinball));
            out.push(metric("mae_p50".into(), resource, s.mae_p50));
            for (q, c) in self.quantiles.iter().zip(&s.coverage) {
                out.push(metric(format!("coverage_{}", level(*q)), resource, *c));
            }
            out.push(metric(
                "baseline_max_pinball_loss".into(),
                resource,
                base[0].pinball,
            ));
            out.push(metric(
                "baseline_bucket_pinball_loss".into(),
                resource,
                base[1].pinball,
            ));
            out.push(metric(
                "unseen_service_pinball_loss".into(),
                resource,
                base[2].pinball,
            ));
        };
        push(
            "",
            &self.overall[0],
            [&self.overall[1], &self.overall[2], &self.overall[3]],
        );
        for r in &self.resources {
            push(
                &r.resource,
                &r.model,
                [&r.historical_max, &r.bucket_percentile, &r.unseen_service],
            );
        }
        out
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let cov: Vec<String> = self
            .quantiles
            .iter()
            .map(|q| format!("cov {}", level(*q)))
            .collect();
        let _ = writeln!(
            s,
            "{:<11} {:>8}  {:<18} {:>8} {:>12}  {}",
            "resource",
            "samples",
            "method",
            "pinball",
            "MAE p50",
            cov.iter().map(|c| format!("{c:>9}")).collect::<String>()
        );
        let mut rows = |name: &str, unit: &str, n: usize, scores: [&Scores; 4]| {
            for (i, (method, sc)) in METHODS.iter().zip(scores).enumerate() {
                let covs: String = sc
                    .coverage
                    .iter()
                    .map(|c| format!("{:>8.1}%", c * 100.0))
                    .collect();
                // As the allocator writes amounts: 42Mi, 466 B/s, 250m.
                let mae = if unit.is_empty() {
                    "-".to_string()
                } else {
                    headroom_units::Unit::parse(unit).format(sc.mae_p50)
                };
                let _ = writeln!(
                    s,
                    "{:<11} {:>8}  {:<18} {:>8.4} {:>12}  {covs}",
                    if i == 0 { name } else { "" },
                    if i == 0 { n.to_string() } else { String::new() },
                    method,
                    sc.pinball,
                    mae,
                );
            }
        };
        for r in &self.resources {
            rows(
                &r.resource,
                &r.unit,
                r.samples,
                [
                    &r.model,
                    &r.historical_max,
                    &r.bucket_percentile,
                    &r.unseen_service,
                ],
            );
        }
        rows(
            "all",
            "",
            self.validation_samples,
            [
                &self.overall[0],
                &self.overall[1],
                &self.overall[2],
                &self.overall[3],
            ],
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Builder;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        assert_eq!(quantiles_of(&v, &[0.5, 0.9, 0.99]), [50.0, 90.0, 99.0]);
        assert_eq!(quantiles_of(&[3.0], &[0.1, 0.9]), [3.0, 3.0]);
    }

    #[test]
    fn baselines_follow_their_definitions() {
        let mut b = Builder::new();
        for s in 0..120 {
            let v = if s < 60 { 1.0 } else { 10.0 };
            b.push("t", "api", "cpu", f64::from(s), v, None).unwrap();
        }
        let d = b.finish();
        let rows: Vec<usize> = (0..d.rows.len()).collect();
        let base = Baselines::fit(&d, &rows, &[0.5, 0.9], 60.0);
        assert_eq!(base.historical_max(0, 0, 2), [10.0, 10.0]);
        assert_eq!(base.bucket_percentile(0, 0, 10.0, 2), [1.0, 1.0]);
        assert_eq!(base.bucket_percentile(0, 0, 70.0, 2), [10.0, 10.0]);
        // A time never seen falls back to the whole task's quantiles.
        assert_eq!(base.bucket_percentile(0, 0, 500.0, 2), [1.0, 10.0]);
    }
}
