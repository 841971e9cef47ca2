//! Backtests: held-out tasks replayed through each strategy, which sees
//! only history from before the split, scored sample by sample.
//!
//! For every held-out sample of a series the strategy allocated (request
//! `r`, limit `l` at that moment) and the usage `u`:
//! - relative slack: the mean of `max(0, (r − u) / r)`;
//! - absolute slack: `max(0, r − u)` integrated over the sample interval:
//!   core-hours for CPU, GiB-hours for memory, GiB for IO rates;
//! - violation rate: the share of samples with `u > l`;
//! - out-of-memory events: memory samples with `u > l`;
//! - changes: resizes (segment boundaries of plans) over the tasks.

use std::collections::{BTreeMap, HashMap};

use headroom_proto::v1;
use tonic::Status;

use crate::{
    sources::{
        Collector, History, Predictor, TaskInfo, expected_duration, seconds_of as secs, timestamp,
    },
    strategy::{self, Kind, Params, Segment, Strategy, Summary},
};

/// Strategies a backtest runs when none are named.
pub const DEFAULT_STRATEGIES: [Strategy; 4] = [
    Strategy::Max,
    Strategy::Percentile,
    Strategy::Predictive,
    Strategy::Plan,
];

/// Sums for one (strategy, resource).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Score {
    /// Σ relative slack.
    pub relative: f64,
    /// Σ absolute slack in the reported unit.
    pub absolute: f64,
    /// Samples above the limit.
    pub violations: u64,
    /// Memory samples above the limit.
    pub oom: u64,
    /// Allocation changes.
    pub changes: u64,
    /// Samples scored.
    pub samples: u64,
}

/// Factor turning (resource unit × seconds) into the reported unit.
pub fn absolute_scale(kind: Kind) -> f64 {
    match kind {
        Kind::Cpu => 1.0 / 3600.0,
        Kind::Memory => 1.0 / (3600.0 * 1073741824.0),
        Kind::Io => 1.0 / 1073741824.0,
    }
}

/// The typical spacing of samples (their median gap); 0 for one sample.
pub fn interval_of(seconds: &[f64]) -> f64 {
    let mut gaps: Vec<f64> = seconds
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 0.0)
        .collect();
    if gaps.is_empty() {
        return 0.0;
    }
    gaps.sort_by(f64::total_cmp);
    gaps[gaps.len() / 2]
}

/// An allocation over a task: constant, or segments.
#[derive(Debug, Clone)]
pub enum Allocation {
    /// The same request and limit throughout.
    Constant(f64, f64),
    /// Segments in time order.
    Segments(Vec<Segment>),
}

impl Allocation {
    /// (request, limit) at `seconds` into the task.
    pub fn at(&self, seconds: f64) -> (f64, f64) {
        match self {
            Self::Constant(r, l) => (*r, *l),
            Self::Segments(s) => s
                .iter()
                .find(|s| seconds < s.end)
                .or(s.last())
                .map_or((0.0, 0.0), |s| (s.request, s.limit)),
        }
    }

    /// Resizes over a task.
    pub fn changes(&self) -> u64 {
        match self {
            Self::Constant(..) => 0,
            Self::Segments(s) => s.len().saturating_sub(1) as u64,
        }
    }
}

/// Adds one series of one task (`(seconds, used)` samples) to `score`.
pub fn score(score: &mut Score, samples: &[(f64, f64)], alloc: &Allocation, kind: Kind) {
    let seconds: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let dt = interval_of(&seconds) * absolute_scale(kind);
    for &(t, used) in samples {
        let (request, limit) = alloc.at(t);
        if request > 0.0 {
            score.relative += ((request - used) / request).max(0.0);
        }
        score.absolute += (request - used).max(0.0) * dt;
        if used > limit {
            score.violations += 1;
            if kind == Kind::Memory {
                score.oom += 1;
            }
        }
        score.samples += 1;
    }
    score.changes += alloc.changes();
}

/// Samples of each (task, service, resource), as `(seconds, used)`.
type Replay = BTreeMap<(usize, String, String), Vec<(f64, f64)>>;

fn by_task(history: &History) -> Replay {
    let mut out: Replay = BTreeMap::new();
    for ((service, resource), obs) in &history.series {
        for o in obs {
            let start = history.tasks[o.task].start;
            out.entry((o.task, service.clone(), resource.clone()))
                .or_default()
                .push((o.ts - start, o.value));
        }
    }
    out
}

/// A step series `(seconds, value)` (ascending) as segments: one per run
/// of equal values, each from its first sample to the next run's.
pub fn steps_to_segments(steps: &[(f64, f64)]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for &(t, v) in steps {
        match out.last_mut() {
            Some(last) if last.request == v => last.end = last.end.max(t),
            Some(last) => {
                last.end = t;
                out.push(Segment {
                    start: t,
                    end: t,
                    request: v,
                    limit: v,
                });
            }
            None => out.push(Segment {
                start: 0.0,
                end: t,
                request: v,
                limit: v,
            }),
        }
    }
    if let Some(last) = out.last_mut() {
        last.end = f64::INFINITY;
    }
    out
}

/// Runs a backtest (see the module doc) against the collector's history
/// and the predictor's model.
pub async fn run(
    collector: &Collector,
    predictor: &Predictor,
    history_window: f64,
    r: v1::BacktestRequest,
) -> Result<v1::BacktestResponse, Status> {
    let invalid = |m: String| Status::invalid_argument(m);
    let named = !r.strategies.is_empty();
    let mut strategies: Vec<Strategy> = if named {
        r.strategies
            .iter()
            .map(|s| s.parse().map_err(invalid))
            .collect::<Result<_, _>>()?
    } else {
        let mut all = DEFAULT_STRATEGIES.to_vec();
        all.push(Strategy::Provisioned);
        all
    };
    let mut params_of = HashMap::new();
    for s in &strategies {
        params_of.insert(*s, Params::resolve(r.params.as_ref(), *s).map_err(invalid)?);
    }
    let resources = if r.resources.is_empty() {
        vec!["cpu".to_string(), "memory".to_string()]
    } else {
        r.resources.clone()
    };
    let max_tasks = if r.max_tasks == 0 {
        100
    } else {
        r.max_tasks as usize
    };

    // The held-out tasks and the split.
    let mut held: Vec<TaskInfo> = if !r.task_ids.is_empty() {
        let mut v = Vec::new();
        for id in &r.task_ids {
            v.push(collector.task(id).await?);
        }
        v
    } else {
        let split = r
            .split
            .as_ref()
            .ok_or_else(|| invalid("give a split time or held-out task_ids".into()))?;
        collector.tasks("", Some(secs(split)), None).await?
    };
    held.retain(|t| t.end.is_some());
    held.sort_by(|a, b| b.start.total_cmp(&a.start));
    held.truncate(max_tasks);
    if held.is_empty() {
        return Err(Status::failed_precondition(
            "no finished held-out task to replay",
        ));
    }
    let split = r
        .split
        .as_ref()
        .map(secs)
        .unwrap_or_else(|| held.iter().map(|t| t.start).fold(f64::MAX, f64::min));
    let mut services: Vec<String> = held.iter().flat_map(|t| t.services.clone()).collect();
    services.sort();
    services.dedup();
    if !r.services.is_empty() {
        services.retain(|s| r.services.contains(s));
    }
    if services.is_empty() {
        return Err(invalid(
            "none of the requested services ran in the held-out tasks".into(),
        ));
    }
    let ids: Vec<String> = held.iter().map(|t| t.id.clone()).collect();
    let replay = collector
        .history(&services, &resources, &ids, None, None)
        .await?;
    let past = collector
        .history(
            &services,
            &resources,
            &[],
            Some(split - history_window),
            Some(split),
        )
        .await?;

    // What the trace's operators allocated, where an import stored it.
    let mut per_task: HashMap<(Strategy, usize, String, String), Allocation> = HashMap::new();
    if strategies.contains(&Strategy::Provisioned) {
        let given = collector.provisioned(&services, &resources, &ids).await?;
        let task_index: HashMap<&str, usize> = replay
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        for ((service, resource), obs) in &given.series {
            let mut by_task: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
            for o in obs {
                let task = &given.tasks[o.task];
                if let Some(&ti) = task_index.get(task.id.as_str()) {
                    by_task
                        .entry(ti)
                        .or_default()
                        .push((o.ts - task.start, o.value));
                }
            }
            for (ti, steps) in by_task {
                per_task.insert(
                    (Strategy::Provisioned, ti, service.clone(), resource.clone()),
                    Allocation::Segments(steps_to_segments(&steps)),
                );
            }
        }
        if per_task.is_empty() {
            if named {
                return Err(Status::failed_precondition(
                    "strategy \"provisioned\" replays an imported trace's allocations, and none are stored for the held-out tasks",
                ));
            }
            strategies.retain(|s| *s != Strategy::Provisioned);
        }
    }

    // The model must not have seen the held-out data.
    let model_based = strategies
        .iter()
        .any(|s| matches!(s, Strategy::Predictive | Strategy::Plan));
    if model_based {
        let info = predictor.info().await?;
        if let Some(to) = info.trained_to.as_ref().map(secs)
            && to > split + 1.0
        {
            return Err(Status::failed_precondition(format!(
                "the model ({}) was trained on data up to {}, after the split {}: train it on history before the split (headroom-train train --end …)",
                info.version,
                chrono::DateTime::from_timestamp(to as i64, 0).unwrap_or_default(),
                chrono::DateTime::from_timestamp(split as i64, 0).unwrap_or_default()
            )));
        }
    }

    // History-based allocations, one per series.
    let mut fixed: HashMap<(Strategy, String, String), Allocation> = HashMap::new();
    for s in strategies
        .iter()
        .filter(|s| matches!(s, Strategy::Max | Strategy::Percentile))
    {
        for ((service, resource), obs) in &past.series {
            let params = &params_of[s];
            let summary = Summary::of(obs, Kind::of(resource), params.half_life_seconds);
            let a = if *s == Strategy::Max {
                strategy::max(&summary, params)
            } else {
                strategy::percentile(&summary, params)
            };
            fixed.insert(
                (*s, service.clone(), resource.clone()),
                Allocation::Constant(a.request, a.limit),
            );
        }
    }

    // Model-based allocations, one per task (shared by tasks of one mix).
    if model_based {
        let mut curves_of_mix = HashMap::new();
        for (ti, task) in replay.tasks.iter().enumerate() {
            let mix = task.services.clone();
            if !curves_of_mix.contains_key(&mix) {
                let horizon = r
                    .params
                    .as_ref()
                    .and_then(|p| p.horizon_seconds)
                    .or_else(|| expected_duration(&past.tasks, &mix))
                    .ok_or_else(|| {
                        Status::failed_precondition(
                            "no finished task before the split tells the task duration: give params.horizon_seconds",
                        )
                    })?;
                let step = (horizon / crate::service::CURVE_POINTS).max(1.0);
                let predicted = predictor.task(&mix, &resources, horizon, step).await?;
                curves_of_mix.insert(mix.clone(), (predicted, horizon));
            }
            let (predicted, horizon) = &curves_of_mix[&mix];
            for ((service, resource), curves) in &predicted.curves {
                for s in &strategies {
                    let alloc = match s {
                        Strategy::Predictive => {
                            let a = strategy::predictive(curves, &params_of[s]);
                            Allocation::Constant(a.request, a.limit)
                        }
                        Strategy::Plan => {
                            Allocation::Segments(strategy::plan(curves, *horizon, &params_of[s]).0)
                        }
                        _ => continue,
                    };
                    per_task.insert((*s, ti, service.clone(), resource.clone()), alloc);
                }
            }
        }
    }
    let alloc_of = |s: Strategy, task: usize, service: &str, resource: &str| {
        fixed
            .get(&(s, service.to_string(), resource.to_string()))
            .or_else(|| per_task.get(&(s, task, service.to_string(), resource.to_string())))
    };

    // Score every held-out sample.
    let samples = by_task(&replay);
    let mut scores: BTreeMap<(Strategy, String), Score> = BTreeMap::new();
    for ((task, service, resource), series) in &samples {
        for s in &strategies {
            if let Some(a) = alloc_of(*s, *task, service, resource) {
                score(
                    scores.entry((*s, resource.clone())).or_default(),
                    series,
                    a,
                    Kind::of(resource),
                );
            }
        }
    }

    // Traces of the requested services: their first held-out task.
    let mut traces = Vec::new();
    for service in &r.trace_services {
        let Some((task, _, _)) = samples.keys().find(|(_, s, _)| s == service) else {
            return Err(invalid(format!(
                "trace service {service:?} did not run in the held-out tasks"
            )));
        };
        for resource in &resources {
            let Some(series) = samples.get(&(*task, service.clone(), resource.clone())) else {
                continue;
            };
            traces.push(v1::BacktestTrace {
                task_id: replay.tasks[*task].id.clone(),
                service: service.clone(),
                resource: resource.clone(),
                seconds: series.iter().map(|s| s.0).collect(),
                used: series.iter().map(|s| s.1).collect(),
                strategies: strategies
                    .iter()
                    .filter_map(|s| {
                        let a = alloc_of(*s, *task, service, resource)?;
                        let at: Vec<(f64, f64)> = series.iter().map(|p| a.at(p.0)).collect();
                        Some(v1::StrategyTrace {
                            strategy: s.name().to_string(),
                            request: at.iter().map(|x| x.0).collect(),
                            limit: at.iter().map(|x| x.1).collect(),
                        })
                    })
                    .collect(),
                unit: crate::service::unit(resource).to_string(),
            });
        }
    }

    Ok(v1::BacktestResponse {
        rows: scores
            .into_iter()
            .map(|((s, resource), sc)| v1::BacktestRow {
                strategy: s.name().to_string(),
                resource,
                relative_slack: sc.relative / sc.samples.max(1) as f64,
                absolute_slack: sc.absolute,
                violation_rate: sc.violations as f64 / sc.samples.max(1) as f64,
                oom_events: sc.oom,
                changes: sc.changes,
                samples: sc.samples,
            })
            .collect(),
        task_ids: replay.tasks.iter().map(|t| t.id.clone()).collect(),
        traces,
        split: Some(timestamp(split)),
    })
}

/// The backtest as an aligned table, one row per strategy and resource.
pub fn table(answer: &v1::BacktestResponse) -> String {
    let mut out = format!(
        "{} held-out tasks; absolute slack in core-hours (cpu), GiB-hours (memory), GiB (IO)\n{:<12} {:<10} {:>9} {:>10} {:>10} {:>6} {:>8} {:>8}\n",
        answer.task_ids.len(),
        "strategy",
        "resource",
        "rel.slack",
        "abs.slack",
        "violation",
        "oom",
        "changes",
        "samples"
    );
    for r in &answer.rows {
        out.push_str(&format!(
            "{:<12} {:<10} {:>8.1}% {:>10.3} {:>9.2}% {:>6} {:>8} {:>8}\n",
            r.strategy,
            r.resource,
            r.relative_slack * 100.0,
            r.absolute_slack,
            r.violation_rate * 100.0,
            r.oom_events,
            r.changes,
            r.samples
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_definitions() {
        let samples = [(0.0, 1.0), (60.0, 2.0), (120.0, 5.0)];
        let mut s = Score::default();
        score(&mut s, &samples, &Allocation::Constant(4.0, 4.0), Kind::Cpu);
        assert_eq!(s.samples, 3);
        assert_eq!(s.violations, 1);
        assert_eq!(s.oom, 0, "only memory counts out-of-memory events");
        assert!((s.relative - (0.75 + 0.5 + 0.0)).abs() < 1e-12);
        // (3 + 2 + 0) core × 60 s = 300 core-seconds.
        assert!((s.absolute - 300.0 / 3600.0).abs() < 1e-12);
        let mut m = Score::default();
        let plan = Allocation::Segments(vec![
            Segment {
                start: 0.0,
                end: 100.0,
                request: 2.0,
                limit: 2.0,
            },
            Segment {
                start: 100.0,
                end: 200.0,
                request: 6.0,
                limit: 6.0,
            },
        ]);
        score(&mut m, &samples, &plan, Kind::Memory);
        assert_eq!((m.violations, m.oom, m.changes), (0, 0, 1));
        assert_eq!(plan.at(150.0), (6.0, 6.0));
        assert_eq!(
            plan.at(999.0),
            (6.0, 6.0),
            "past the horizon the last segment holds"
        );
    }

    #[test]
    fn provisioned_steps_become_segments() {
        let s = steps_to_segments(&[(0.0, 2.0), (10.0, 2.0), (20.0, 4.0), (30.0, 4.0)]);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].start, s[0].end, s[0].request), (0.0, 20.0, 2.0));
        assert_eq!((s[1].start, s[1].request), (20.0, 4.0));
        let a = Allocation::Segments(s);
        assert_eq!(a.at(15.0), (2.0, 2.0));
        assert_eq!(a.at(25.0), (4.0, 4.0));
        assert_eq!(a.changes(), 1);
    }

    #[test]
    fn the_interval_is_the_median_gap() {
        assert_eq!(interval_of(&[0.0, 30.0, 60.0, 200.0]), 30.0);
        assert_eq!(interval_of(&[5.0]), 0.0);
    }
}
