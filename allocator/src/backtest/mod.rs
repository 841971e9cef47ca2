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

use std::collections::{BTreeMap, HashMap, HashSet};

pub use score::{
    Allocation, Replay, Score, absolute_scale, by_task, interval_of, score, steps_to_segments,
};

use crate::{
    allocate::{FALLBACK_STRATEGY, fallback_params, history_alloc},
    calibrate,
    error::{Error, Result},
    grpc::sources::{Collector, Predictor},
    history::{History, TaskInfo, expected_duration},
    params::{Kind, Overrides, Params},
    replay::ModelWin,
    strategy::{Strategy, Summary},
};

/// Strategies a backtest runs when none are named.
pub const DEFAULT_STRATEGIES: [Strategy; 6] = [
    Strategy::Max,
    Strategy::Percentile,
    Strategy::Vpa,
    Strategy::Predictive,
    Strategy::Plan,
    Strategy::Auto,
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
    /// Variants to score for the slack–violation frontier.
    pub sweep: Option<Sweep>,
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
    /// Share of the scored series (task × service) the strategy could not
    /// answer itself and that fell back to the history-based one.
    pub fallback_share: f64,
    /// Share of the scored series (task × service) allocated from the
    /// model's curves (`predictive` and `plan` where they did not fall
    /// back, `auto` where a model-based candidate won).
    pub model_share: f64,
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
    /// The slack–violation frontier, when a sweep was asked.
    pub frontier: Vec<FrontierPoint>,
}

/// Allocations keyed by (strategy, task index, service, resource); history-
/// based ones are keyed by task `None` (one per series).
type Allocations = HashMap<(Strategy, Option<usize>, String, String), Allocation>;

/// (strategy, task index, service, resource) whose allocation fell back.
type FellBack = HashSet<(Strategy, usize, String, String)>;

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
        // A strategy named twice is scored once (twice, its samples and
        // slack were summed twice).
        let mut once = Vec::new();
        for s in &ask.strategies {
            if !once.contains(s) {
                once.push(*s);
            }
        }
        once
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
    crate::allocate::check_resources(&resources)?;
    let held = held_out(collector, &ask).await?;
    let split = ask
        .split
        .unwrap_or_else(|| held.iter().map(|t| t.start).fold(f64::MAX, f64::min));
    let mut services: Vec<String> = held.iter().flat_map(|t| t.services.clone()).collect();
    services.sort();
    services.dedup();
    if !ask.services.is_empty() {
        if let Some(absent) = ask.services.iter().find(|s| !services.contains(s)) {
            return Err(Error::ServiceNotHeldOut {
                service: absent.clone(),
                ran: services.join(", "),
            });
        }
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

    let given = if strategies.contains(&Strategy::Provisioned) {
        let given = collector.provisioned(&services, &resources, &ids).await?;
        let mut probe = Allocations::new();
        provisioned(&given, &replay, &mut probe);
        if probe.is_empty() {
            if named {
                return Err(Error::NothingProvisioned);
            }
            strategies.retain(|s| *s != Strategy::Provisioned);
        }
        given
    } else {
        History::default()
    };
    let model_based = |s: &[Strategy]| {
        s.iter()
            .any(|s| matches!(s, Strategy::Predictive | Strategy::Plan))
    };
    if model_based(&strategies)
        || ask
            .sweep
            .as_ref()
            .is_some_and(|w| !w.target_violation_rates.is_empty())
    {
        check_model(predictor, split).await?;
    }
    let samples = by_task(&replay);
    // Resources asked by name must each have something to score; the
    // defaults only together.
    let unscored: Vec<&str> = resources
        .iter()
        .filter(|r| !samples.keys().any(|(_, _, res)| res == *r))
        .map(String::as_str)
        .collect();
    if samples.is_empty() || (!ask.resources.is_empty() && !unscored.is_empty()) {
        return Err(Error::NothingToScore {
            tasks: held.len(),
            resources: if samples.is_empty() {
                resources.join(", ")
            } else {
                unscored.join(", ")
            },
        });
    }
    let data = Loaded {
        samples,
        replay,
        past,
        given,
        resources,
        split,
        horizon: ask.params.horizon_seconds,
    };
    if data.past.series.is_empty() {
        return Err(Error::NoHistoryBeforeSplit {
            split: chrono::DateTime::from_timestamp(split as i64, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            window: headroom_units::duration(history_window),
        });
    }
    let (rows, allocs) = data
        .evaluate(collector, predictor, &strategies, &params_of)
        .await?;
    let frontier = match &ask.sweep {
        Some(sweep) => {
            data.frontier(collector, predictor, sweep, &ask.params)
                .await?
        }
        None => Vec::new(),
    };
    let (samples, replay, resources) = (&data.samples, &data.replay, &data.resources);
    let alloc_of = |s: Strategy, task: usize, service: &str, resource: &str| {
        let key = |t| (s, t, service.to_string(), resource.to_string());
        allocs
            .get(&key(Some(task)))
            .or_else(|| allocs.get(&key(None)))
    };

    // Traces of the requested services: their first held-out task.
    let mut traces = Vec::new();
    for service in &ask.trace_services {
        // Its first held-out task: the earliest it ran in (the replay holds
        // tasks in the order the collector streamed them).
        let first = samples
            .keys()
            .filter(|(_, s, _)| s == service)
            .min_by(|a, b| {
                let (x, y) = (&replay.tasks[a.0], &replay.tasks[b.0]);
                x.start.total_cmp(&y.start).then_with(|| x.id.cmp(&y.id))
            });
        let Some((task, _, _)) = first else {
            let mut ran: Vec<&str> = samples.keys().map(|(_, s, _)| s.as_str()).collect();
            ran.sort_unstable();
            ran.dedup();
            return Err(Error::UnknownTraceService {
                service: service.clone(),
                ran: ran.join(", "),
            });
        };
        for resource in resources {
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
        rows,
        task_ids: in_time_order(&replay.tasks),
        traces,
        split,
        recorded_oom_kills,
        frontier,
    })
}

/// The ids of `tasks` by start (then id), whatever order the collector
/// streamed them in (a month of daily tasks came back 24, 25, …, 22, 21).
fn in_time_order(tasks: &[TaskInfo]) -> Vec<String> {
    let mut sorted: Vec<&TaskInfo> = tasks.iter().collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start).then_with(|| a.id.cmp(&b.id)));
    sorted.into_iter().map(|t| t.id.clone()).collect()
}

/// A backtest's data, read once and scored for every variant.
struct Loaded {
    /// The held-out tasks' samples.
    replay: History,
    /// `replay` per task, service and resource.
    samples: Replay,
    /// History before the split, which the strategies see.
    past: History,
    /// What the trace's operators allocated, where imported.
    given: History,
    resources: Vec<String>,
    split: f64,
    horizon: Option<f64>,
}

impl Loaded {
    /// Rows per (strategy, resource) of `strategies` with `params_of`,
    /// and the allocations they scored.
    async fn evaluate(
        &self,
        collector: &Collector,
        predictor: &Predictor,
        strategies: &[Strategy],
        params_of: &HashMap<Strategy, Params>,
    ) -> Result<(Vec<BacktestRow>, Allocations)> {
        let mut allocs = Allocations::new();
        if strategies.contains(&Strategy::Provisioned) {
            provisioned(&self.given, &self.replay, &mut allocs);
        }
        from_history(strategies, params_of, &self.past, &mut allocs);
        let mut fell_back = FellBack::new();
        let ctx = Predicting {
            predictor,
            collector,
            resources: &self.resources,
            horizon: self.horizon,
            strategies,
            params_of,
            split: self.split,
        };
        if strategies
            .iter()
            .any(|s| matches!(s, Strategy::Predictive | Strategy::Plan))
        {
            ctx.allocate(&self.past, &self.replay, &mut allocs, &mut fell_back)
                .await?;
        }
        if strategies.contains(&Strategy::Auto) {
            ctx.auto(&self.past, &self.replay, &mut allocs).await?;
        }
        let alloc_of = |s: Strategy, task: usize, service: &str, resource: &str| {
            let key = |t| (s, t, service.to_string(), resource.to_string());
            allocs
                .get(&key(Some(task)))
                .or_else(|| allocs.get(&key(None)))
        };
        let mut scores: BTreeMap<(Strategy, String), (Score, u64, u64, u64)> = BTreeMap::new();
        for ((task, service, resource), series) in &self.samples {
            for s in strategies {
                if let Some(a) = alloc_of(*s, *task, service, resource) {
                    let (sc, scored, fell, modeled) =
                        scores.entry((*s, resource.clone())).or_default();
                    score(sc, series, a, Kind::of(resource));
                    *scored += 1;
                    let key = (*s, *task, service.clone(), resource.clone());
                    let fell_here = fell_back.contains(&key);
                    if fell_here {
                        *fell += 1;
                    }
                    let from_model = match s {
                        Strategy::Predictive | Strategy::Plan => !fell_here,
                        Strategy::Auto => allocs.contains_key(&(
                            *s,
                            Some(*task),
                            service.clone(),
                            resource.clone(),
                        )),
                        _ => false,
                    };
                    if from_model {
                        *modeled += 1;
                    }
                }
            }
        }
        let rows = scores
            .into_iter()
            .map(
                |((strategy, resource), (sc, scored, fell, modeled))| BacktestRow {
                    strategy,
                    resource,
                    relative_slack: sc.relative / sc.samples.max(1) as f64,
                    absolute_slack: sc.absolute,
                    violation_rate: sc.violations as f64 / sc.samples.max(1) as f64,
                    oom_events: sc.oom,
                    changes: sc.changes,
                    samples: sc.samples,
                    fallback_share: fell as f64 / scored.max(1) as f64,
                    model_share: modeled as f64 / scored.max(1) as f64,
                },
            )
            .collect();
        Ok((rows, allocs))
    }

    /// The slack–violation frontier: every variant of `sweep` scored on
    /// the same data, one point per (variant, resource).
    async fn frontier(
        &self,
        collector: &Collector,
        predictor: &Predictor,
        sweep: &Sweep,
        base: &Overrides,
    ) -> Result<Vec<FrontierPoint>> {
        let mut out = Vec::new();
        for (strategy, setting, overrides) in sweep.variants(base) {
            let params = Params::resolve(&overrides, strategy)?;
            let params_of = HashMap::from([(strategy, params)]);
            let (rows, _) = self
                .evaluate(collector, predictor, &[strategy], &params_of)
                .await?;
            for r in rows {
                out.push(FrontierPoint {
                    strategy,
                    setting: setting.clone(),
                    resource: r.resource,
                    violation_rate: r.violation_rate,
                    relative_slack: r.relative_slack,
                    oom_events: r.oom_events,
                    fallback_share: r.fallback_share,
                    model_share: r.model_share,
                });
            }
        }
        Ok(out)
    }
}

/// What a backtest sweeps to draw the slack–violation frontier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweep {
    /// Violation targets of `predictive` and `plan`.
    pub target_violation_rates: Vec<f64>,
    /// Percentiles (CPU and memory alike) of `percentile`.
    pub percentiles: Vec<f64>,
    /// Margins of `percentile`.
    pub margins: Vec<f64>,
    /// Overrun weights of `auto` (a memory overrun weighs 100 times more).
    pub overrun_weights: Vec<f64>,
}

impl Sweep {
    /// The sweep a backtest runs when asked for a frontier with no values:
    /// targets 0.1–5 %, percentiles 50–99 with margins 0–30 %, and `auto`
    /// with overrun weights 1–100, plus `vpa` at its defaults.
    pub fn standard() -> Self {
        Self {
            target_violation_rates: vec![0.001, 0.005, 0.01, 0.02, 0.05],
            percentiles: vec![50.0, 80.0, 90.0, 95.0, 99.0],
            margins: vec![0.0, 0.15, 0.3],
            overrun_weights: vec![1.0, 10.0, 100.0],
        }
    }

    /// Every variant: (strategy, its setting in words, its parameters).
    pub fn variants(&self, base: &Overrides) -> Vec<(Strategy, String, Overrides)> {
        let mut out = Vec::new();
        for &rate in &self.target_violation_rates {
            for s in [Strategy::Predictive, Strategy::Plan] {
                let o = Overrides {
                    target_violation_rate: Some(rate),
                    ..base.clone()
                };
                out.push((s, format!("target {:.1} %", rate * 100.0), o));
            }
        }
        for &p in &self.percentiles {
            for &m in &self.margins {
                let o = Overrides {
                    cpu_percentile: Some(p),
                    memory_percentile: Some(p),
                    margin: Some(m),
                    ..base.clone()
                };
                out.push((
                    Strategy::Percentile,
                    format!("p{p} + {:.0} %", m * 100.0),
                    o,
                ));
            }
        }
        if !self.percentiles.is_empty() {
            out.push((Strategy::Vpa, "defaults".into(), base.clone()));
        }
        for &w in &self.overrun_weights {
            let o = Overrides {
                overrun_weight: Some(w),
                oom_weight: Some(w * 100.0),
                ..base.clone()
            };
            out.push((Strategy::Auto, format!("overrun weight {w}"), o));
        }
        out
    }
}

/// One point of the frontier.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontierPoint {
    /// The strategy.
    pub strategy: Strategy,
    /// Its setting, in words (`target 1.0 %`, `p90 + 15 %`).
    pub setting: String,
    /// The resource's wire name.
    pub resource: String,
    /// Share of held-out samples above the limit.
    pub violation_rate: f64,
    /// Mean relative slack.
    pub relative_slack: f64,
    /// Memory samples above the limit.
    pub oom_events: u64,
    /// Share of scored series × tasks that fell back (as
    /// [`BacktestRow::fallback_share`]): a point that fell back entirely
    /// is the history-based strategy's, not the model's.
    pub fallback_share: f64,
    /// Share allocated by the model (as [`BacktestRow::model_share`]).
    pub model_share: f64,
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
        return Err(Error::NothingHeldOut {
            hint: nothing_held_out_hint(collector, ask).await?,
        });
    }
    Ok(held)
}

/// Why no task was held out, and what to do: a split after the newest
/// task names that task and its start.
async fn nothing_held_out_hint(collector: &Collector, ask: &BacktestAsk) -> Result<String> {
    let time = |s: f64| {
        chrono::DateTime::from_timestamp_micros((s * 1e6) as i64).map_or_else(
            || format!("{s} s"),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    let Some(split) = ask.split.filter(|_| ask.task_ids.is_empty()) else {
        return Ok(format!(
            "; none of the tasks named ({}) has ended",
            ask.task_ids.join(", ")
        ));
    };
    Ok(match collector.newest_task().await? {
        None => "; the collector holds no task yet".to_string(),
        Some(newest) if newest.start < split => format!(
            "; split {} is after the newest task, {}, which started at {}: give a split at or before {}",
            time(split),
            newest.id,
            time(newest.start),
            time(newest.start)
        ),
        Some(newest) => format!(
            "; the tasks started after split {} have not ended (the newest, {}, started at {})",
            time(split),
            newest.id,
            time(newest.start)
        ),
    })
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
    for s in strategies.iter().filter(|s| {
        matches!(
            s,
            Strategy::Max | Strategy::Percentile | Strategy::Vpa | Strategy::Auto
        )
    }) {
        for ((service, resource), obs) in &past.series {
            let params = &params_of[s];
            let summary = Summary::of(obs, Kind::of(resource), params.half_life_seconds);
            let a = history_alloc(*s, &summary, params);
            allocs.insert(
                (*s, None, service.clone(), resource.clone()),
                Allocation::Constant(a.request, a.limit),
            );
        }
    }
}

/// The predictor's curves per known mix, and the horizon they cover.
type CurvesOfMix = HashMap<Vec<String>, (crate::grpc::sources::Predicted, f64)>;

/// What the model-based allocations of a backtest need.
struct Predicting<'a> {
    predictor: &'a Predictor,
    collector: &'a Collector,
    resources: &'a [String],
    horizon: Option<f64>,
    strategies: &'a [Strategy],
    params_of: &'a HashMap<Strategy, Params>,
    /// The split: calibration sees only what came before it.
    split: f64,
}

impl Predicting<'_> {
    /// The known mix of `task`, with its curves put in `cache` (asked of
    /// the predictor as of the split, over the horizon a task of that mix
    /// got before it) unless the mix or the resources are empty.
    async fn curves(
        &self,
        past: &History,
        task: &TaskInfo,
        known: &HashSet<String>,
        predictable: &[String],
        cache: &mut CurvesOfMix,
    ) -> Result<Vec<String>> {
        let mix = crate::replay::known_mix(&task.services, known);
        if !mix.is_empty() && !predictable.is_empty() && !cache.contains_key(&mix) {
            let horizon = self
                .horizon
                .or_else(|| expected_duration(&past.tasks, &task.services))
                .ok_or(Error::NoDurationBeforeSplit)?;
            let step = crate::quantiles::curve_step(horizon);
            let predicted = self
                .predictor
                .task(&mix, predictable, horizon, step, self.split)
                .await?;
            cache.insert(mix.clone(), (predicted, horizon));
        }
        Ok(mix)
    }

    /// What the model `info` never fitted before the split, of `past`'s
    /// services and the `predictable` resources (see
    /// [`crate::replay::out_of_sample`]); `None`: calibrate on `past`.
    async fn calibration_history(
        &self,
        info: &crate::grpc::sources::ModelInfo,
        past: &History,
        predictable: &[String],
    ) -> Result<Option<History>> {
        let services: Vec<String> = past.series.keys().map(|k| k.0.clone()).collect();
        crate::replay::out_of_sample(
            self.collector,
            info,
            &services,
            predictable,
            f64::MIN,
            self.split,
        )
        .await
    }

    /// `auto` with its model-based candidates: each series' history
    /// family's cheapest (from the history before the split) against the
    /// model's candidates replayed on the calibration history before the
    /// split; where a model candidate wins, the series is allocated per
    /// held-out task by it, replacing the history's constant. Without a
    /// served model, or with one trained past the split (it saw the
    /// held-out tasks), `auto` keeps the history family alone.
    async fn auto(&self, past: &History, replay: &History, allocs: &mut Allocations) -> Result<()> {
        let Ok(info) = self.predictor.info().await else {
            return Ok(());
        };
        if info.trained_to.is_some_and(|to| to > self.split + 1.0) {
            return Ok(());
        }
        let params = &self.params_of[&Strategy::Auto];
        let (known, predictable) = (info.known(), info.predictable(self.resources));
        let out_of_sample = self.calibration_history(&info, past, &predictable).await?;
        let horizon_of = |t: &TaskInfo| crate::replay::horizon_before(&past.tasks, t, self.horizon);
        let models = crate::replay::model_candidates(
            self.predictor,
            &info,
            out_of_sample.as_ref().unwrap_or(past),
            &predictable,
            params,
            self.split,
            &horizon_of,
        )
        .await?;
        let mut curves_of_mix = CurvesOfMix::new();
        for ((service, resource), obs) in &past.series {
            let summary = Summary::of(obs, Kind::of(resource), params.half_life_seconds);
            let Some(win) = ModelWin::of(&summary, params, &models, service, resource) else {
                continue;
            };
            let key = (service.clone(), resource.clone());
            for (ti, task) in replay.tasks.iter().enumerate() {
                if !task.services.contains(service) {
                    continue;
                }
                let mix = self
                    .curves(past, task, &known, &predictable, &mut curves_of_mix)
                    .await?;
                // A task whose curves lack the series keeps the history's.
                let Some((curves, horizon)) = curves_of_mix
                    .get(&mix)
                    .and_then(|(p, h)| p.curves.get(&key).map(|c| (c, *h)))
                else {
                    continue;
                };
                let (segments, a) = win.allocate(curves, horizon, params);
                allocs.insert(
                    (Strategy::Auto, Some(ti), service.clone(), resource.clone()),
                    crate::replay::as_allocation(&segments, &a),
                );
            }
        }
        Ok(())
    }

    /// Model-based allocations, one per task (curves shared by the tasks of
    /// one mix), calibrated on the history before the split; a series the
    /// model does not know or cannot calibrate gets the fallback's
    /// allocation and is recorded in `fell_back`.
    async fn allocate(
        &self,
        past: &History,
        replay: &History,
        allocs: &mut Allocations,
        fell_back: &mut FellBack,
    ) -> Result<()> {
        let info = self.predictor.info().await?;
        let (known, predictable) = (info.known(), info.predictable(self.resources));
        // Calibrate on usage the model never fitted, when it says which.
        let out_of_sample = self.calibration_history(&info, past, &predictable).await?;
        let calibration_history = out_of_sample.as_ref().unwrap_or(past);
        let mut calibration = HashMap::new();
        // A plan's cap: the predictive rule's calibration, per series.
        let mut caps = HashMap::new();
        for s in self
            .strategies
            .iter()
            .filter(|s| matches!(s, Strategy::Predictive | Strategy::Plan))
        {
            let params = &self.params_of[s];
            let horizon_of =
                |t: &TaskInfo| crate::replay::horizon_before(&past.tasks, t, self.horizon);
            let maps = crate::replay::scores_of_rules(
                self.predictor,
                &known,
                calibration_history,
                &predictable,
                &crate::replay::calibration_rules(*s, params),
                self.split,
                &horizon_of,
            )
            .await?;
            let rate = params.target_violation_rate;
            let calibrate_all = |scores: &HashMap<(String, String), Vec<calibrate::Score>>,
                                 rate: f64| {
                let pools = calibrate::Pools::of(scores);
                let mut of = HashMap::new();
                for ((service, resource), own) in scores {
                    if let Some(c) = pools.calibrate(own, resource, rate) {
                        of.insert((service.clone(), resource.clone()), c);
                    }
                }
                of
            };
            calibration.insert(*s, calibrate_all(&maps[0], rate));
            if let Some(cap) = maps.get(1) {
                let (plan_half, cap_half) = (
                    calibrate_all(&maps[0], rate / 2.0),
                    calibrate_all(cap, rate / 2.0),
                );
                caps = calibrate_all(cap, rate)
                    .into_iter()
                    .map(|(key, cc)| {
                        let c = crate::replay::PlanCap {
                            cap: cc,
                            plan_half: plan_half.get(&key).copied(),
                            cap_half: cap_half.get(&key).copied(),
                        };
                        (key, c)
                    })
                    .collect();
            }
        }
        let mut curves_of_mix = CurvesOfMix::new();
        for (ti, task) in replay.tasks.iter().enumerate() {
            let mix = self
                .curves(past, task, &known, &predictable, &mut curves_of_mix)
                .await?;
            for service in &task.services {
                for resource in self.resources {
                    let key = (service.clone(), resource.clone());
                    let curves = curves_of_mix
                        .get(&mix)
                        .and_then(|(p, h)| p.curves.get(&key).map(|c| (c, *h)));
                    for s in self.strategies {
                        if !matches!(s, Strategy::Predictive | Strategy::Plan) {
                            continue;
                        }
                        let params = &self.params_of[s];
                        let cal = calibration.get(s).and_then(|c| c.get(&key));
                        let alloc = match (curves, cal) {
                            (Some((curves, horizon)), Some(c)) => {
                                let (mut segments, mut a) =
                                    crate::replay::rule(*s, curves, horizon, params);
                                crate::replay::apply(
                                    c,
                                    &mut segments,
                                    &mut a,
                                    params.target_violation_rate,
                                );
                                if *s == Strategy::Plan
                                    && let Some(cap) = caps.get(&key)
                                {
                                    crate::replay::capped_plan(
                                        &mut segments,
                                        &mut a,
                                        curves,
                                        horizon,
                                        params,
                                        Kind::of(resource),
                                        cap,
                                    );
                                }
                                crate::replay::as_allocation(&segments, &a)
                            }
                            _ => {
                                fell_back.insert((*s, ti, service.clone(), resource.clone()));
                                let obs = past.of(service, resource);
                                if obs.is_empty() {
                                    continue;
                                }
                                let fallback = fallback_params(params);
                                let summary = Summary::of(
                                    obs,
                                    Kind::of(resource),
                                    fallback.half_life_seconds,
                                );
                                let a = history_alloc(FALLBACK_STRATEGY, &summary, &fallback);
                                Allocation::Constant(a.request, a.limit)
                            }
                        };
                        allocs.insert((*s, Some(ti), service.clone(), resource.clone()), alloc);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_tasks_are_listed_in_time_order() {
        let task = |id: &str, start: f64| TaskInfo {
            id: id.into(),
            start,
            end: Some(start + 1.0),
            services: Vec::new(),
        };
        let streamed = [
            task("d24", 24.0),
            task("d25", 25.0),
            task("d22", 22.0),
            task("d21", 21.0),
        ];
        assert_eq!(in_time_order(&streamed), ["d21", "d22", "d24", "d25"]);
    }
}
