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

mod score;

use std::collections::{BTreeMap, HashMap};

pub use score::{
    Allocation, Replay, Score, absolute_scale, by_task, interval_of, score, steps_to_segments,
};

use crate::{
    error::{Error, Result},
    grpc::sources::{Collector, Predictor},
    history::{History, TaskInfo, expected_duration},
    params::{Kind, Overrides, Params},
    strategy::{self, Strategy, Summary},
};

/// Strategies a backtest runs when none are named.
pub const DEFAULT_STRATEGIES: [Strategy; 4] = [
    Strategy::Max,
    Strategy::Percentile,
    Strategy::Predictive,
    Strategy::Plan,
];

/// Most held-out tasks replayed when the request sets no bound.
pub const DEFAULT_MAX_TASKS: usize = 100;

/// What to replay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BacktestAsk {
    /// Strategies to score; empty: [`DEFAULT_STRATEGIES`] and
    /// `provisioned` where an import stored allocations.
    pub strategies: Vec<Strategy>,
    /// Held-out tasks are those started at or after this (unix seconds).
    pub split: Option<f64>,
    /// Or these held-out tasks.
    pub task_ids: Vec<String>,
    /// Services to score (all that ran when empty).
    pub services: Vec<String>,
    /// Resources to score (cpu and memory when empty).
    pub resources: Vec<String>,
    /// Strategy parameters.
    pub params: Overrides,
    /// Most held-out tasks, the newest; `None`: [`DEFAULT_MAX_TASKS`].
    pub max_tasks: Option<usize>,
    /// Services whose first held-out task is traced sample by sample.
    pub trace_services: Vec<String>,
}

/// Scores of one strategy on one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct BacktestRow {
    /// The strategy.
    pub strategy: Strategy,
    /// The resource's wire name.
    pub resource: String,
    /// Mean relative slack, in [0, 1].
    pub relative_slack: f64,
    /// Slack summed over time: core-hours, GiB-hours or GiB.
    pub absolute_slack: f64,
    /// Share of samples above the limit, in [0, 1].
    pub violation_rate: f64,
    /// Memory samples above the limit.
    pub oom_events: u64,
    /// Resizes over the tasks.
    pub changes: u64,
    /// Samples scored.
    pub samples: u64,
}

/// One strategy's allocation at each sample of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyTrace {
    /// The strategy.
    pub strategy: Strategy,
    /// Request at each sample.
    pub request: Vec<f64>,
    /// Limit at each sample.
    pub limit: Vec<f64>,
}

/// Usage of one series in one held-out task against every strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The task.
    pub task_id: String,
    /// The service.
    pub service: String,
    /// The resource's wire name.
    pub resource: String,
    /// Seconds into the task of each sample.
    pub seconds: Vec<f64>,
    /// Usage at each sample, in the resource's unit.
    pub used: Vec<f64>,
    /// Each strategy's allocation at the same samples.
    pub strategies: Vec<StrategyTrace>,
}

/// A backtest's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BacktestReport {
    /// One row per strategy and resource.
    pub rows: Vec<BacktestRow>,
    /// The held-out tasks replayed.
    pub task_ids: Vec<String>,
    /// Traces of the requested services.
    pub traces: Vec<Trace>,
    /// The split, unix seconds.
    pub split: f64,
    /// OOM kills recorded (`oom_kills`) in the held-out tasks of the
    /// replayed services, beside the strategies' simulated OOM events.
    pub recorded_oom_kills: u64,
}

/// Allocations keyed by (strategy, task index, service, resource); history-
/// based ones are keyed by task `None` (one per series).
type Allocations = HashMap<(Strategy, Option<usize>, String, String), Allocation>;

/// Runs a backtest (see the module doc) against the collector's history
/// (`history_window` seconds before the split) and the predictor's model.
pub async fn run(
    collector: &Collector,
    predictor: &Predictor,
    history_window: f64,
    ask: BacktestAsk,
) -> Result<BacktestReport> {
    let named = !ask.strategies.is_empty();
    let mut strategies = if named {
        ask.strategies.clone()
    } else {
        let mut all = DEFAULT_STRATEGIES.to_vec();
        all.push(Strategy::Provisioned);
        all
    };
    let mut params_of = HashMap::new();
    for s in &strategies {
        params_of.insert(*s, Params::resolve(&ask.params, *s)?);
    }
    let resources = if ask.resources.is_empty() {
        crate::default_resources()
    } else {
        ask.resources.clone()
    };
    let held = held_out(collector, &ask).await?;
    let split = ask
        .split
        .unwrap_or_else(|| held.iter().map(|t| t.start).fold(f64::MAX, f64::min));
    let mut services: Vec<String> = held.iter().flat_map(|t| t.services.clone()).collect();
    services.sort();
    services.dedup();
    if !ask.services.is_empty() {
        services.retain(|s| ask.services.contains(s));
    }
    if services.is_empty() {
        return Err(Error::NoHeldOutService);
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
    let kills = collector
        .history(
            &services,
            &[headroom_proto::resource::OOM_KILLS.to_string()],
            &ids,
            None,
            None,
        )
        .await?;
    let recorded_oom_kills = kills
        .series
        .values()
        .flatten()
        .map(|o| o.value.round().max(0.0) as u64)
        .sum();

    let mut allocs = Allocations::new();
    if strategies.contains(&Strategy::Provisioned) {
        let given = collector.provisioned(&services, &resources, &ids).await?;
        provisioned(&given, &replay, &mut allocs);
        if allocs.is_empty() {
            if named {
                return Err(Error::NothingProvisioned);
            }
            strategies.retain(|s| *s != Strategy::Provisioned);
        }
    }
    let model_based = strategies
        .iter()
        .any(|s| matches!(s, Strategy::Predictive | Strategy::Plan));
    if model_based {
        check_model(predictor, split).await?;
    }
    from_history(&strategies, &params_of, &past, &mut allocs);
    if model_based {
        let ctx = Predicting {
            predictor,
            resources: &resources,
            horizon: ask.params.horizon_seconds,
            strategies: &strategies,
            params_of: &params_of,
        };
        ctx.allocate(&past, &replay, &mut allocs).await?;
    }
    let alloc_of = |s: Strategy, task: usize, service: &str, resource: &str| {
        let key = |t| (s, t, service.to_string(), resource.to_string());
        allocs
            .get(&key(None))
            .or_else(|| allocs.get(&key(Some(task))))
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
    for service in &ask.trace_services {
        let Some((task, _, _)) = samples.keys().find(|(_, s, _)| s == service) else {
            return Err(Error::UnknownTraceService {
                service: service.clone(),
            });
        };
        for resource in &resources {
            let Some(series) = samples.get(&(*task, service.clone(), resource.clone())) else {
                continue;
            };
            traces.push(Trace {
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
                        Some(StrategyTrace {
                            strategy: *s,
                            request: at.iter().map(|x| x.0).collect(),
                            limit: at.iter().map(|x| x.1).collect(),
                        })
                    })
                    .collect(),
            });
        }
    }

    Ok(BacktestReport {
        rows: scores
            .into_iter()
            .map(|((strategy, resource), sc)| BacktestRow {
                strategy,
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
        split,
        recorded_oom_kills,
    })
}

/// The finished held-out tasks, newest first, at most `max_tasks`.
async fn held_out(collector: &Collector, ask: &BacktestAsk) -> Result<Vec<TaskInfo>> {
    let mut held: Vec<TaskInfo> = if !ask.task_ids.is_empty() {
        let mut v = Vec::new();
        for id in &ask.task_ids {
            v.push(collector.task(id).await?);
        }
        v
    } else {
        let split = ask.split.ok_or(Error::NoSplit)?;
        collector.tasks("", Some(split), None).await?
    };
    held.retain(|t| t.end.is_some());
    held.sort_by(|a, b| b.start.total_cmp(&a.start));
    held.truncate(ask.max_tasks.unwrap_or(DEFAULT_MAX_TASKS));
    if held.is_empty() {
        return Err(Error::NothingHeldOut);
    }
    Ok(held)
}

/// What the trace's operators allocated, where an import stored it.
fn provisioned(given: &History, replay: &History, allocs: &mut Allocations) {
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
            allocs.insert(
                (
                    Strategy::Provisioned,
                    Some(ti),
                    service.clone(),
                    resource.clone(),
                ),
                Allocation::Segments(steps_to_segments(&steps)),
            );
        }
    }
}

/// The model must not have seen the held-out data.
async fn check_model(predictor: &Predictor, split: f64) -> Result<()> {
    let info = predictor.info().await?;
    let rfc3339 = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .unwrap_or_default()
            .to_string()
    };
    match info.trained_to {
        Some(to) if to > split + 1.0 => Err(Error::ModelAfterSplit {
            version: info.version,
            trained_to: rfc3339(to),
            split: rfc3339(split),
        }),
        _ => Ok(()),
    }
}

/// History-based allocations, one per series.
fn from_history(
    strategies: &[Strategy],
    params_of: &HashMap<Strategy, Params>,
    past: &History,
    allocs: &mut Allocations,
) {
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
            allocs.insert(
                (*s, None, service.clone(), resource.clone()),
                Allocation::Constant(a.request, a.limit),
            );
        }
    }
}

/// What the model-based allocations of a backtest need.
struct Predicting<'a> {
    predictor: &'a Predictor,
    resources: &'a [String],
    horizon: Option<f64>,
    strategies: &'a [Strategy],
    params_of: &'a HashMap<Strategy, Params>,
}

impl Predicting<'_> {
    /// Model-based allocations, one per task (curves shared by the tasks of
    /// one mix).
    async fn allocate(
        &self,
        past: &History,
        replay: &History,
        allocs: &mut Allocations,
    ) -> Result<()> {
        let mut curves_of_mix = HashMap::new();
        for (ti, task) in replay.tasks.iter().enumerate() {
            let mix = task.services.clone();
            if !curves_of_mix.contains_key(&mix) {
                let horizon = self
                    .horizon
                    .or_else(|| expected_duration(&past.tasks, &mix))
                    .ok_or(Error::NoDurationBeforeSplit)?;
                let step = crate::quantiles::curve_step(horizon);
                let predicted = self
                    .predictor
                    .task(&mix, self.resources, horizon, step)
                    .await?;
                curves_of_mix.insert(mix.clone(), (predicted, horizon));
            }
            let (predicted, horizon) = &curves_of_mix[&mix];
            for ((service, resource), curves) in &predicted.curves {
                for s in self.strategies {
                    let params = &self.params_of[s];
                    let alloc = match s {
                        Strategy::Predictive => {
                            let a = strategy::predictive(curves, params);
                            Allocation::Constant(a.request, a.limit)
                        }
                        Strategy::Plan => {
                            Allocation::Segments(strategy::plan(curves, *horizon, params).0)
                        }
                        _ => continue,
                    };
                    allocs.insert((*s, Some(ti), service.clone(), resource.clone()), alloc);
                }
            }
        }
        Ok(())
    }
}
