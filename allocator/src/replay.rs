//! The model-based strategies as they are served: the rule over the
//! predictor's curves, calibrated on the series' own replayed history
//! ([`crate::calibrate`]), and the per-series fallback to the history-based
//! strategy when the model does not know a service or its history is too
//! thin to calibrate.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{
    backtest::{Allocation, by_task},
    calibrate::{self, Calibration, Score},
    error::Result,
    grpc::sources::{Collector, ModelInfo, Predictor},
    history::{History, TaskInfo, expected_duration},
    params::Params,
    quantiles::{Curves, curve_step},
    segments::Segment,
    strategy::{self, Alloc, Strategy, Summary, auto},
};

/// Most past tasks (the newest) whose mixes are replayed to calibrate.
pub const MAX_REPLAYED_TASKS: usize = 64;

/// The uncalibrated rule of `strategy` (`predictive` or `plan`) over
/// `curves`: the allocation and, for `plan`, its segments.
pub fn rule(
    strategy: Strategy,
    curves: &Curves,
    horizon: f64,
    params: &Params,
) -> (Vec<Segment>, Alloc) {
    match strategy {
        Strategy::Plan => strategy::plan(curves, horizon, params),
        _ => (Vec::new(), strategy::predictive(curves, params)),
    }
}

/// The rule's allocation over a task, as a backtest replays it.
pub fn as_allocation(segments: &[Segment], alloc: &Alloc) -> Allocation {
    if segments.is_empty() {
        Allocation::Constant(alloc.request, alloc.limit)
    } else {
        Allocation::Segments(segments.to_vec())
    }
}

/// Scales a calibrated answer: request, limit and every segment by
/// `c.factor`, with the detail saying so.
pub fn apply(c: &Calibration, segments: &mut [Segment], alloc: &mut Alloc, rate: f64) {
    let f = c.factor;
    alloc.request *= f;
    alloc.limit *= f;
    for s in segments.iter_mut() {
        s.request *= f;
        s.limit *= f;
    }
    alloc.violation_risk = rate;
    alloc.samples_used = c.scores as u64;
    if alloc.request <= 0.0 {
        // Usage replayed at zero throughout (an idle disk, no traffic):
        // nothing allocated, so nothing idles either (the curves' slack,
        // read before calibration, would say otherwise).
        alloc.expected_slack = 0.0;
    }
    alloc.detail.push_str(&format!(
        "; calibrated ×{f:.3} so that {:.2} % of {} replayed samples of {} (effective {:.0}) lie above it",
        rate * 100.0,
        c.scores,
        if c.pooled {
            "this resource's series in the request, this one's too few"
        } else {
            "its own recent tasks"
        },
        c.effective,
    ));
}

/// A series `auto` gives to a model-based candidate: which, its recent
/// cost and calibration, and what it beat.
#[derive(Debug, Clone, Copy)]
pub struct ModelWin {
    /// The winner.
    pub winner: auto::ModelCandidate,
    /// Its recent out-of-sample cost.
    pub cost: auto::Cost,
    /// Its calibration on all the replayed history.
    pub calibration: Calibration,
    /// The history family's best: candidate, request, cost.
    pub history: Option<(auto::Candidate, f64, auto::Cost)>,
    /// The cost weights of the series' resource.
    pub weights: auto::Weights,
}

impl ModelWin {
    /// Whether a model-based candidate of `models` is cheaper for
    /// (`service`, `resource`) than the history family's best on
    /// `summary`, under `params`' weights: the win, else `None`.
    pub fn of(
        summary: &Summary,
        params: &Params,
        models: &ModelCandidates,
        service: &str,
        resource: &str,
    ) -> Option<Self> {
        let weights = auto::weights(summary.kind(), params);
        let history = summary.autopilot_best(&weights);
        let costs = models.costs(service, resource);
        let auto::Winner::Model(k) =
            auto::cheapest(history.as_ref().map(|h| &h.2), &costs, &weights)?
        else {
            return None;
        };
        let (cost, calibration) = models
            .of
            .get(&(service.to_string(), resource.to_string()))
            .and_then(|v| v.get(k))
            .and_then(|(cost, cal)| Some(((*cost)?, (*cal)?)))?;
        Some(Self {
            winner: auto::ModelCandidate::all()[k],
            cost,
            calibration,
            history,
            weights,
        })
    }

    /// The winner's rule over `curves` (a horizon of `horizon` seconds)
    /// with its violation target, calibrated, and a detail naming it, its
    /// cost and the history's best.
    pub fn allocate(
        &self,
        curves: &Curves,
        horizon: f64,
        params: &Params,
    ) -> (Vec<Segment>, Alloc) {
        let (winner, weights) = (self.winner, &self.weights);
        let p = Params {
            target_violation_rate: winner.rate,
            ..params.clone()
        };
        let (mut segments, mut a) = rule(winner.strategy, curves, horizon, &p);
        apply(&self.calibration, &mut segments, &mut a, winner.rate);
        let beat = match &self.history {
            Some((c, _, h)) => format!(
                ", below the best history candidate's {:.4} ({c})",
                h.total(weights)
            ),
            None => ", the history family having no charged hour yet".into(),
        };
        a.detail = format!(
            "auto: {} at a {:.2} % target, calibrated, had the lowest recent cost {:.4} of {} candidates ({}, each recent task allocated as the tasks before it calibrated it; {weights}){beat}: {}",
            winner.strategy,
            winner.rate * 100.0,
            self.cost.total(weights),
            auto::family_size(true),
            self.cost.describe(),
            a.detail
        );
        (segments, a)
    }
}

/// The rules a calibration of `strategy` replays: its own, and for `plan`
/// also `predictive`'s, which caps it ([`cap_plan`]).
pub fn calibration_rules(strategy: Strategy, params: &Params) -> Vec<(Strategy, Params)> {
    let mut rules = vec![(strategy, params.clone())];
    if strategy == Strategy::Plan {
        rules.push((Strategy::Predictive, params.clone()));
    }
    rules
}

/// Caps a calibrated plan at `level`, the calibrated `predictive` level of
/// the same curves and target. One factor fitted to a plan whose curve dips
/// near zero where usage goes on lifts every segment by the misses of the
/// dips, its peak far above any use (×20 seen on real VMs, 63 cores for a
/// 2-core VM); no segment needs more than the constant level that keeps
/// the promise over the whole horizon. The detail says when it cut.
pub fn cap_plan(
    segments: &mut [Segment],
    alloc: &mut Alloc,
    level: f64,
    limit_ratio: f64,
    kind: crate::params::Kind,
) {
    let peak = segments
        .iter()
        .map(|s| s.request)
        .fold(alloc.request, f64::max);
    if !(level > 0.0 && peak > level) {
        return;
    }
    for s in segments.iter_mut().filter(|s| s.request > level) {
        s.request = level;
        s.limit = level * limit_ratio;
    }
    alloc.request = level;
    alloc.limit = level * limit_ratio;
    alloc.detail.push_str(&format!(
        "; capped at {}, the calibrated constant level for the same target (its own calibration put its peak at {})",
        crate::render::amount(kind, level),
        crate::render::amount(kind, peak)
    ));
}

/// What a plan's cap needs of one series: the `predictive` rule's
/// calibration at the target α, and both rules' at α / 2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanCap {
    /// `predictive`'s calibration at α: the level the plan is capped at.
    pub cap: Calibration,
    /// The plan's calibration at α / 2.
    pub plan_half: Option<Calibration>,
    /// `predictive`'s calibration at α / 2.
    pub cap_half: Option<Calibration>,
}

/// Caps a plan calibrated at α (`segments`, `alloc`, over `curves` and
/// `horizon`) where its peak exceeds the calibrated `predictive` level
/// ([`cap_plan`]). A capped plan lies above the usage where either part
/// does, so when the cap binds both are calibrated at α / 2 (when their
/// scores reach it): by the union bound at most α of samples lie above
/// the capped plan.
#[allow(clippy::too_many_arguments)]
pub fn capped_plan(
    segments: &mut Vec<Segment>,
    alloc: &mut Alloc,
    curves: &Curves,
    horizon: f64,
    params: &Params,
    kind: crate::params::Kind,
    cap: &PlanCap,
) {
    let rate = params.target_violation_rate;
    let constant = strategy::predictive(curves, params).request;
    let peak = segments
        .iter()
        .map(|s| s.request)
        .fold(alloc.request, f64::max);
    if peak <= constant * cap.cap.factor {
        return;
    }
    match (cap.plan_half, cap.cap_half) {
        (Some(plan_half), Some(cap_half)) => {
            let (s, mut a) = rule(Strategy::Plan, curves, horizon, params);
            *segments = s;
            apply(&plan_half, segments, &mut a, rate);
            cap_plan(
                segments,
                &mut a,
                constant * cap_half.factor,
                params.limit_ratio,
                kind,
            );
            a.detail
                .push_str(" (the plan and its cap each calibrated at half the target, so that together they keep it)");
            *alloc = a;
        }
        _ => cap_plan(
            segments,
            alloc,
            constant * cap.cap.factor,
            params.limit_ratio,
            kind,
        ),
    }
    merge_equal(segments);
}

/// Joins neighbouring segments that allocate the same (capping can level
/// several at the cap): a resize that changes nothing is not one.
pub fn merge_equal(segments: &mut Vec<Segment>) {
    segments.dedup_by(|next, kept| {
        let same = next.request == kept.request && next.limit == kept.limit;
        if same {
            kept.end = next.end;
        }
        same
    });
}

/// Why a series could not be calibrated, for its fallback.
pub fn thin_reason(own: &[Score], rate: f64) -> String {
    if own.is_empty() {
        "no replayable history (no recent task of this service with the model's curves)".into()
    } else {
        format!(
            "{} replayed samples in {} task-hours cannot calibrate a {:.2} % violation target (a new task's samples miss together: it needs the weight of {:.0} recent task-hours, and older ones weigh less), nor can its resource's pool",
            own.len(),
            calibrate::blocks(own),
            rate * 100.0,
            calibrate::needed(rate)
        )
    }
}

/// The history a model is calibrated on: usage it never fitted — the
/// tasks held out of its training, and those after its training window —
/// up to `reference` (unix seconds). `None` when the model names no
/// held-out task (a model from before Headroom recorded them): the caller
/// then calibrates in sample and says so.
pub async fn out_of_sample(
    collector: &Collector,
    info: &ModelInfo,
    services: &[String],
    resources: &[String],
    window_start: f64,
    reference: f64,
) -> Result<Option<History>> {
    if info.held_out_tasks.is_empty() {
        return Ok(None);
    }
    let held = collector
        .history(
            services,
            resources,
            &info.held_out_tasks,
            None,
            Some(reference),
        )
        .await?;
    let after = match info.trained_to {
        Some(to) if to < reference => {
            collector
                .history(
                    services,
                    resources,
                    &[],
                    Some(to.max(window_start)),
                    Some(reference),
                )
                .await?
        }
        _ => History::default(),
    };
    let merged = held.merge(after);
    Ok((!merged.tasks.is_empty()).then_some(merged))
}

/// Scores per (service, resource) of `past` replayed through `strategy`'s
/// rule with `params`: see [`scores_of_rules`].
#[allow(clippy::too_many_arguments)]
pub async fn scores(
    predictor: &Predictor,
    known: &HashSet<String>,
    past: &History,
    resources: &[String],
    strategy: Strategy,
    params: &Params,
    reference: f64,
    horizon: &(dyn Fn(&TaskInfo) -> Option<f64> + Sync),
) -> Result<HashMap<(String, String), Vec<Score>>> {
    let rules = [(strategy, params.clone())];
    let mut out = scores_of_rules(
        predictor, known, past, resources, &rules, reference, horizon,
    )
    .await?;
    Ok(out.pop().unwrap_or_default())
}

/// Scores per (service, resource) of `past` replayed through each of
/// `rules` (a strategy, `predictive` or `plan`, and its parameters), one
/// map per rule in their order: for each of a service's newest
/// [`MAX_REPLAYED_TASKS`] tasks, the model's curves for its mix (only the
/// services in `known`) over the horizon `horizon(task)` gives — what a
/// request for it would have got before it ran — (its own duration when
/// `None`), the rule over them, and each sample's `used / limit`, aged
/// from `reference` (unix seconds). The predictor is asked once per mix
/// and horizon, whatever the number of rules.
#[allow(clippy::too_many_arguments)]
pub async fn scores_of_rules(
    predictor: &Predictor,
    known: &HashSet<String>,
    past: &History,
    resources: &[String],
    rules: &[(Strategy, Params)],
    reference: f64,
    horizon: &(dyn Fn(&TaskInfo) -> Option<f64> + Sync),
) -> Result<Vec<HashMap<(String, String), Vec<Score>>>> {
    let samples = by_task(past);
    // Each service's newest tasks: a service that runs rarely keeps as
    // many as one that runs in every task.
    let mut tasks_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (task, service, _) in samples.keys() {
        if known.contains(service) {
            tasks_of.entry(service.as_str()).or_default().push(*task);
        }
    }
    let mut replayed: HashSet<(usize, &str)> = HashSet::new();
    for (service, tasks) in &mut tasks_of {
        tasks.sort_unstable();
        tasks.dedup();
        tasks.sort_by(|a, b| past.tasks[*b].start.total_cmp(&past.tasks[*a].start));
        tasks.truncate(MAX_REPLAYED_TASKS);
        replayed.extend(tasks.iter().map(|t| (*t, *service)));
    }
    // Each task is replayed as it would have been allocated: the horizon
    // a task of its mix gets (the caller's rule), its known services' curves.
    let min_segment = rules
        .iter()
        .map(|r| r.1.min_segment_seconds)
        .fold(0.0, f64::max);
    let key_of = |task: usize| -> (Vec<String>, u64) {
        let t = &past.tasks[task];
        let h = horizon(t)
            .unwrap_or_else(|| t.end.map_or(0.0, |e| e - t.start))
            .max(min_segment);
        (known_mix(&t.services, known), h.to_bits())
    };
    // Once per task: the horizon rule may scan every earlier task.
    let mut key_of_task: HashMap<usize, (Vec<String>, u64)> = HashMap::new();
    for &(task, _) in &replayed {
        key_of_task.entry(task).or_insert_with(|| key_of(task));
    }
    let keys: BTreeMap<(Vec<String>, u64), ()> =
        key_of_task.values().map(|k| (k.clone(), ())).collect();
    let mut curves_of = HashMap::new();
    for (mix, h) in keys.keys() {
        let horizon = f64::from_bits(*h);
        let predicted = predictor
            .task(mix, resources, horizon, curve_step(horizon), reference)
            .await?;
        curves_of.insert((mix.clone(), *h), (predicted, horizon));
    }
    let mut out: Vec<HashMap<(String, String), Vec<Score>>> = vec![HashMap::new(); rules.len()];
    for ((task, service, resource), series) in &samples {
        if !replayed.contains(&(*task, service.as_str())) {
            continue;
        }
        let t = &past.tasks[*task];
        let Some((predicted, horizon)) = key_of_task.get(task).and_then(|k| curves_of.get(k))
        else {
            continue;
        };
        let Some(curves) = predicted.curves.get(&(service.clone(), resource.clone())) else {
            continue;
        };
        for ((strategy, params), out) in rules.iter().zip(out.iter_mut()) {
            let (segments, alloc) = rule(*strategy, curves, *horizon, params);
            let a = as_allocation(&segments, &alloc);
            let scores = out.entry((service.clone(), resource.clone())).or_default();
            for &(seconds, used) in series {
                let limit = a.at(seconds).1;
                if limit > 0.0 {
                    scores.push(Score {
                        ratio: used / limit,
                        age: reference - (t.start + seconds),
                        limit,
                        task_age: reference - t.start,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// One model-based candidate on one series: its recent out-of-sample cost
/// and its calibration (see [`ModelCandidates::of`]).
pub type CandidateFit = (Option<auto::Cost>, Option<Calibration>);

/// `auto`'s model-based candidates ([`auto::ModelCandidate::all`])
/// evaluated per series on its replayed recent tasks.
#[derive(Debug, Clone, Default)]
pub struct ModelCandidates {
    /// The model they were evaluated with.
    pub version: String,
    /// Per (service, resource), one entry per candidate in
    /// [`auto::ModelCandidate::all`]'s order: its recent out-of-sample
    /// cost ([`auto::model_cost`], `None` when no task could be charged)
    /// and its calibration on all the replayed history (`None` when it
    /// cannot be calibrated).
    pub of: HashMap<(String, String), Vec<CandidateFit>>,
    /// The parameters they were evaluated with (without the cost weights).
    pub params: Params,
    /// The resources they were evaluated for.
    pub resources: Vec<String>,
}

impl ModelCandidates {
    /// What an explanation says of the model's candidates on a series the
    /// history family won: the cheapest model candidate and its cost under
    /// `weights`, or why none could be charged.
    pub fn lost(&self, service: &str, resource: &str, weights: &auto::Weights) -> String {
        let candidates = auto::ModelCandidate::all();
        let best = self
            .costs(service, resource)
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i, c?.total(weights))))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((i, cost)) => format!(
                "; the model's {} candidates competed too: the cheapest, {} at a {:.2} % target, cost {cost:.4}",
                candidates.len(),
                candidates[i].strategy,
                candidates[i].rate * 100.0
            ),
            None if self.of.contains_key(&(service.to_string(), resource.to_string())) => {
                "; the model's candidates could not compete: too few replayed samples before each recent task to calibrate them".into()
            }
            None => format!(
                "; the model's candidates could not compete: no replayed recent task of this series with model {}",
                self.version
            ),
        }
    }

    /// The candidates' costs of one series, `None` where a candidate
    /// cannot allocate it (no charged cost or no calibration).
    pub fn costs(&self, service: &str, resource: &str) -> Vec<Option<auto::Cost>> {
        self.of
            .get(&(service.to_string(), resource.to_string()))
            .map(|v| v.iter().map(|(cost, cal)| cal.and(*cost)).collect())
            .unwrap_or_default()
    }
}

/// Evaluates `auto`'s model-based candidates for every series of `past`
/// (which the model `info` describes) on `resources` the model predicts:
/// one replay ([`scores_of_rules`]) with every candidate's rule, `params`
/// with the candidate's violation target, then each candidate's recent
/// cost and calibration per series (pooled as [`calibrate::own_or_pooled`]).
pub async fn model_candidates(
    predictor: &Predictor,
    info: &ModelInfo,
    past: &History,
    resources: &[String],
    params: &Params,
    reference: f64,
    horizon: &(dyn Fn(&TaskInfo) -> Option<f64> + Sync),
) -> Result<ModelCandidates> {
    let known = info.known();
    let predictable = info.predictable(resources);
    let candidates = auto::ModelCandidate::all();
    let rules: Vec<(Strategy, Params)> = candidates
        .iter()
        .map(|c| {
            (
                c.strategy,
                Params {
                    target_violation_rate: c.rate,
                    ..params.clone()
                },
            )
        })
        .collect();
    let mut out = ModelCandidates {
        version: info.version.clone(),
        of: HashMap::new(),
        params: params.clone(),
        resources: resources.to_vec(),
    };
    if predictable.is_empty() || known.is_empty() {
        return Ok(out);
    }
    let maps = scores_of_rules(
        predictor,
        &known,
        past,
        &predictable,
        &rules,
        reference,
        horizon,
    )
    .await?;
    for (i, (c, scores)) in candidates.iter().zip(&maps).enumerate() {
        let pools = calibrate::Pools::of(scores);
        for (key, own) in scores {
            let entry = out
                .of
                .entry(key.clone())
                .or_insert_with(|| vec![(None, None); candidates.len()]);
            entry[i] = (
                auto::model_cost(own, c.rate, params.limit_ratio),
                pools.calibrate(own, &key.1, c.rate),
            );
        }
    }
    Ok(out)
}

/// The horizon a task of `task`'s mix would have been given before it
/// started: `fixed`, else [`expected_duration`] over the tasks of `tasks`
/// that had ended by then.
pub fn horizon_before(tasks: &[TaskInfo], task: &TaskInfo, fixed: Option<f64>) -> Option<f64> {
    fixed.or_else(|| {
        let before: Vec<TaskInfo> = tasks
            .iter()
            .filter(|t| t.end.is_some_and(|e| e <= task.start))
            .cloned()
            .collect();
        expected_duration(&before, &task.services)
    })
}

/// The services of a mix the model knows, sorted.
pub fn known_mix(mix: &[String], known: &HashSet<String>) -> Vec<String> {
    let mut m: Vec<String> = mix.iter().filter(|s| known.contains(*s)).cloned().collect();
    m.sort();
    m
}

/// A note for a series whose service never ran in the requested mix among
/// `tasks` (recent tasks), naming the mix it ran in most often: the model
/// predicts a service for the services it is told run beside it, and
/// services interfere, so asking for one service alone predicts a task
/// that may never happen. `mix` and the tasks' mixes are compared on the
/// services the model knows. `None` when the service ran in that mix, or
/// in no recent task at all.
pub fn unseen_mix_note(
    service: &str,
    mix: &[String],
    tasks: &[TaskInfo],
    known: &HashSet<String>,
) -> Option<String> {
    let mut seen: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for t in tasks
        .iter()
        .filter(|t| t.services.iter().any(|s| s == service))
    {
        *seen.entry(known_mix(&t.services, known)).or_default() += 1;
    }
    if seen.is_empty() || seen.contains_key(mix) {
        return None;
    }
    // The most frequent mix; among equals, the first in order.
    let (usual, n) =
        seen.iter()
            .fold(None::<(&Vec<String>, usize)>, |best, (m, n)| match best {
                Some((_, b)) if b >= *n => best,
                _ => Some((m, *n)),
            })?;
    let beside: Vec<&str> = usual
        .iter()
        .map(String::as_str)
        .filter(|s| *s != service)
        .collect();
    Some(format!(
        "; note: {service} never ran {} in the {} recent task(s) it ran in; most often ({n}) it ran beside {}. The model's answer depends on the services listed: list those it runs with",
        describe(mix, service),
        seen.values().sum::<usize>(),
        if beside.is_empty() {
            "no other service".to_string()
        } else {
            beside.join(", ")
        }
    ))
}

/// How a service ran in a mix, for a note: `alone`, or `beside exactly
/// a, b`.
fn describe(mix: &[String], service: &str) -> String {
    let others: Vec<&str> = mix
        .iter()
        .map(String::as_str)
        .filter(|s| *s != service)
        .collect();
    if others.is_empty() {
        "alone".into()
    } else {
        format!("beside exactly {}", others.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(services: &[&str]) -> TaskInfo {
        let mut services: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        services.sort();
        TaskInfo {
            id: services.join("+"),
            start: 0.0,
            end: Some(1.0),
            services,
        }
    }

    fn names(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_plan_is_capped_at_the_calibrated_constant_level() {
        let seg = |start, request| Segment {
            start,
            end: start + 600.0,
            request,
            limit: request,
        };
        let mut segments = vec![seg(0.0, 0.5), seg(600.0, 63.0), seg(1200.0, 2.0)];
        let mut a = Alloc {
            request: 63.0,
            limit: 63.0,
            expected_slack: 0.0,
            violation_risk: 0.01,
            samples_used: 0,
            detail: String::new(),
        };
        cap_plan(&mut segments, &mut a, 3.0, 1.0, crate::params::Kind::Cpu);
        let levels: Vec<f64> = segments.iter().map(|s| s.request).collect();
        assert_eq!(levels, [0.5, 3.0, 2.0]);
        assert_eq!((a.request, a.limit), (3.0, 3.0));
        assert!(a.detail.contains("capped at 3 cores"), "{}", a.detail);
        // Below the level: untouched.
        let before = segments.clone();
        cap_plan(&mut segments, &mut a, 10.0, 1.0, crate::params::Kind::Cpu);
        assert_eq!(segments, before);
        // Segments levelled at the cap are one segment, not resizes to the
        // same level.
        let mut levelled = vec![seg(0.0, 0.5), seg(600.0, 3.0), seg(1200.0, 3.0)];
        merge_equal(&mut levelled);
        assert_eq!(levelled.len(), 2);
        assert_eq!((levelled[1].start, levelled[1].end), (600.0, 1800.0));
    }

    #[test]
    fn a_zero_calibration_leaves_no_slack() {
        let mut a = Alloc {
            request: 5e6,
            limit: 5e6,
            expected_slack: 0.4,
            violation_risk: 0.01,
            samples_used: 0,
            detail: String::new(),
        };
        let c = |factor| Calibration {
            factor,
            scores: 300,
            effective: 300.0,
            pooled: false,
        };
        let mut calibrated = a.clone();
        apply(&c(2.0), &mut [], &mut calibrated, 0.01);
        assert_eq!((calibrated.request, calibrated.expected_slack), (1e7, 0.4));
        // An idle disk's usage replayed at 0 B/s: 0 allocated, 0 idle.
        apply(&c(0.0), &mut [], &mut a, 0.01);
        assert_eq!((a.request, a.limit, a.expected_slack), (0.0, 0.0, 0.0));
        assert_eq!(a.samples_used, 300);
    }

    #[test]
    fn a_mix_the_service_never_ran_in_is_named_with_its_usual_one() {
        let known: HashSet<String> = names(&["api", "db", "cache"]).into_iter().collect();
        let tasks = [
            task(&["api", "db"]),
            task(&["api", "db", "cache"]),
            task(&["api", "db"]),
            task(&["worker"]),
        ];
        let note = unseen_mix_note("api", &names(&["api"]), &tasks, &known).unwrap();
        assert!(
            note.contains("api never ran alone in the 3 recent task(s)")
                && note.contains("most often (2) it ran beside db."),
            "{note}"
        );
        // Its usual mix, and a service with no recent task: nothing to say.
        assert_eq!(
            unseen_mix_note("api", &names(&["api", "db"]), &tasks, &known),
            None
        );
        assert_eq!(
            unseen_mix_note("billing", &names(&["billing"]), &tasks, &known),
            None
        );
        // Services the model does not know do not count in the comparison.
        let tasks = [task(&["api", "db", "sidecar"])];
        assert_eq!(
            unseen_mix_note("api", &names(&["api", "db"]), &tasks, &known),
            None
        );
    }
}
