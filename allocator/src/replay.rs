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
    strategy::{self, Alloc, Strategy, auto},
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

/// `auto`'s answer for a series where the model-based candidate `winner`
/// (recent cost `cost`, calibration `cal`) beat the history family's best
/// (`history`: candidate, request, cost) and the other model candidates
/// under `weights`: the winner's rule over `curves` with its violation
/// target, calibrated, and a detail naming it, its cost and the history's.
#[allow(clippy::too_many_arguments)]
pub fn auto_by_model(
    winner: auto::ModelCandidate,
    cost: &auto::Cost,
    cal: &Calibration,
    history: Option<&(auto::Candidate, f64, auto::Cost)>,
    weights: &auto::Weights,
    curves: &Curves,
    horizon: f64,
    params: &Params,
) -> (Vec<Segment>, Alloc) {
    let p = Params {
        target_violation_rate: winner.rate,
        ..params.clone()
    };
    let (mut segments, mut a) = rule(winner.strategy, curves, horizon, &p);
    apply(cal, &mut segments, &mut a, winner.rate);
    let beat = match history {
        Some((c, _, h)) => format!(
            ", below the best history candidate's {:.4} ({c})",
            h.total(weights)
        ),
        None => ", the history family having no charged hour yet".into(),
    };
    a.detail = format!(
        "auto: {} at a {:.2} % target, calibrated, had the lowest recent cost {:.4} of {} candidates (overrun {:.2} %, relative slack {:.1} %, resizes in {:.1} % of hours, each recent task allocated as the tasks before it calibrated it; weights {} / {} / {}){beat}{}: {}",
        winner.strategy,
        winner.rate * 100.0,
        cost.total(weights),
        auto::family_size(true),
        cost.overrun() * 100.0,
        cost.underrun() * 100.0,
        cost.change_rate() * 100.0,
        weights.overrun,
        weights.underrun,
        weights.changes,
        if winner.strategy == Strategy::Plan && segments.len() > 1 {
            "; a constant answer is the plan's peak, Plan gives its segments"
        } else {
            ""
        },
        a.detail
    );
    (segments, a)
}

/// Why a series could not be calibrated, for its fallback.
pub fn thin_reason(own: &[Score], rate: f64) -> String {
    if own.is_empty() {
        "no replayable history (no recent task of this service with the model's curves)".into()
    } else {
        format!(
            "{} replayed samples cannot calibrate a {:.2} % violation target (it needs an effective {:.0}), nor can its resource's pool",
            own.len(),
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
    let mut keys: BTreeMap<(Vec<String>, u64), ()> = BTreeMap::new();
    for &(task, _) in &replayed {
        keys.insert(key_of(task), ());
    }
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
        let Some((predicted, horizon)) = curves_of.get(&key_of(*task)) else {
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
    let known: HashSet<String> = info.services.iter().cloned().collect();
    let predictable: Vec<String> = resources
        .iter()
        .filter(|r| info.resources.contains(r))
        .cloned()
        .collect();
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
        let pools = pools(scores);
        for (key, own) in scores {
            let pool = pools.get(&key.1).map_or(&[][..], Vec::as_slice);
            let entry = out
                .of
                .entry(key.clone())
                .or_insert_with(|| vec![(None, None); candidates.len()]);
            entry[i] = (
                auto::model_cost(own, c.rate, params.limit_ratio),
                calibrate::own_or_pooled(own, pool, c.rate),
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

/// The scores of every series of one resource, pooled.
pub fn pools(scores: &HashMap<(String, String), Vec<Score>>) -> HashMap<String, Vec<Score>> {
    let mut out: HashMap<String, Vec<Score>> = HashMap::new();
    for ((_, resource), s) in scores {
        out.entry(resource.clone()).or_default().extend(s);
    }
    out
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
