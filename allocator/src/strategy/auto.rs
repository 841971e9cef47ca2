//! `auto`: Google Autopilot's recommender (Rzadca et al., "Autopilot:
//! workload autoscaling at Google", EuroSys 2020, §4.2), per series. A
//! family of candidate recommenders (a decaying-histogram percentile plus a
//! margin) is replayed over the series' own history as it arrives: each
//! candidate's request is recomputed at every window boundary from the
//! samples before it and charged for the next window's samples, with
//! `cost = w_o × overrun + w_u × underrun + w_c × changes`, past windows
//! decaying. The request is the cheapest candidate's, computed from all
//! the history.
//!
//! - overrun: the share of samples above the candidate's limit (for memory
//!   each is an OOM kill, hence its larger weight);
//! - underrun: the mean relative slack `max(0, (r − u) / r)`;
//! - changes: the share of windows at whose start the request moved by
//!   more than [`CHANGE_THRESHOLD`].
//!
//! Everything is folded sample by sample into [`Autopilot`], so a
//! recommendation reads no samples (it answers from the history snapshot).
//!
//! Where a model is served, the family also holds the calibrated model:
//! `predictive` at each of [`MODEL_TARGETS`]. Their recent cost is
//! charged the same way on the series' replayed recent tasks
//! ([`model_cost`]), each task allocated with the calibration factor the
//! tasks before it gave, so the model competes out of sample as the
//! histograms do. `plan` is not a candidate: `auto` answers one request
//! per series, and a plan's segments are not one (its peak, which a
//! constant answer would take, was never what its cost was charged for).

use crate::{
    calibrate::{self, Score},
    histogram::DecayingHistogram,
    params::{Kind, Params},
    strategy::Strategy,
};

/// Half-lives of the candidates' histograms, in seconds (6 h, 1 d, 3 d).
pub const HALF_LIVES: [f64; 3] = [6.0 * 3600.0, 86_400.0, 3.0 * 86_400.0];
/// Percentiles of the candidates, as fractions (1.0: the maximum).
pub const PERCENTILES: [f64; 7] = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0];
/// Margins of the candidates, as fractions.
pub const MARGINS: [f64; 4] = [0.0, 0.1, 0.2, 0.4];
/// Length of one evaluation window: candidates are recomputed this often.
pub const WINDOW_SECONDS: f64 = 3600.0;
/// Half-life of the charged costs: recent windows count more.
pub const COST_HALF_LIFE_SECONDS: f64 = 2.0 * 86_400.0;
/// A move of the request by more than this fraction counts as a change.
pub const CHANGE_THRESHOLD: f64 = 0.1;

/// The cost weights (defaults: [`Weights::of`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Per unit of overrun (share of samples above the limit).
    pub overrun: f64,
    /// Per unit of underrun (mean relative slack).
    pub underrun: f64,
    /// Per unit of changes (share of windows with a resize).
    pub changes: f64,
}

impl Weights {
    /// Defaults for `kind`: a CPU overrun (throttling) costs as much as 10
    /// times the slack; a memory overrun is an OOM kill and costs 1,000
    /// times; a resize in every window costs as much as 1 % of slack.
    pub fn of(kind: Kind) -> Self {
        Self {
            overrun: if kind == Kind::Memory { 1000.0 } else { 10.0 },
            underrun: 1.0,
            changes: 0.01,
        }
    }
}

/// One candidate: a percentile of one of the histograms, plus a margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index into [`HALF_LIVES`].
    pub half_life: usize,
    /// The percentile, a fraction.
    pub percentile: f64,
    /// The margin, a fraction.
    pub margin: f64,
}

impl Candidate {
    /// Every candidate of the family, in a fixed order.
    pub fn all() -> Vec<Self> {
        let mut out = Vec::new();
        for half_life in 0..HALF_LIVES.len() {
            for percentile in PERCENTILES {
                for margin in MARGINS {
                    out.push(Self {
                        half_life,
                        percentile,
                        margin,
                    });
                }
            }
        }
        out
    }
}

impl std::fmt::Display for Candidate {
    /// `p95 of samples decaying with a 24h half-life plus 10 % margin`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p{} of samples decaying with a {}h half-life plus {:.0} % margin",
            self.percentile * 100.0,
            HALF_LIVES[self.half_life] / 3600.0,
            self.margin * 100.0
        )
    }
}

impl std::fmt::Display for Weights {
    /// `weights 10 / 1 / 0.01` (overrun, underrun, changes).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {} / {} / {}",
            self.overrun, self.underrun, self.changes
        )
    }
}

/// How many candidates `auto` compares per series: the history family's,
/// and the model-based ones where a model is served.
pub fn family_size(with_model: bool) -> usize {
    Candidate::all().len()
        + if with_model {
            ModelCandidate::all().len()
        } else {
            0
        }
}

/// Decayed cost sums of one candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// Σ samples above the limit.
    pub overruns: f64,
    /// Σ relative slack.
    pub slack: f64,
    /// Σ samples.
    pub samples: f64,
    /// Σ windows with a resize.
    pub changes: f64,
    /// Σ windows.
    pub windows: f64,
}

impl Cost {
    /// Share of samples above the limit.
    pub fn overrun(&self) -> f64 {
        self.overruns / self.samples.max(f64::MIN_POSITIVE)
    }

    /// Mean relative slack.
    pub fn underrun(&self) -> f64 {
        self.slack / self.samples.max(f64::MIN_POSITIVE)
    }

    /// Share of windows with a resize.
    pub fn change_rate(&self) -> f64 {
        self.changes / self.windows.max(f64::MIN_POSITIVE)
    }

    /// `overrun 0.13 %, relative slack 52.9 %, resizes in 74.5 % of
    /// hours`, for an explanation.
    pub fn describe(&self) -> String {
        format!(
            "overrun {:.2} %, relative slack {:.1} %, resizes in {:.1} % of hours",
            self.overrun() * 100.0,
            self.underrun() * 100.0,
            self.change_rate() * 100.0
        )
    }

    /// `w_o × overrun + w_u × underrun + w_c × changes`.
    pub fn total(&self, w: &Weights) -> f64 {
        w.overrun * self.overrun() + w.underrun * self.underrun() + w.changes * self.change_rate()
    }
}

/// The family's state for one series, folded sample by sample.
#[derive(Debug, Clone)]
pub struct Autopilot {
    kind: Kind,
    hists: Vec<DecayingHistogram>,
    candidates: Vec<Candidate>,
    /// Each candidate's request in the current window (0 before the first
    /// boundary: nothing to charge yet).
    requests: Vec<f64>,
    costs: Vec<Cost>,
    /// Samples of the current window.
    window: Vec<f64>,
    window_end: Option<f64>,
    /// Time of the last closed window's end, for decaying the costs.
    charged_at: Option<f64>,
}

impl Autopilot {
    /// An empty state for a series of `kind`.
    pub fn new(kind: Kind) -> Self {
        let candidates = Candidate::all();
        Self {
            kind,
            hists: HALF_LIVES
                .iter()
                .map(|h| DecayingHistogram::new(kind, *h))
                .collect(),
            requests: vec![0.0; candidates.len()],
            costs: vec![Cost::default(); candidates.len()],
            candidates,
            window: Vec::new(),
            window_end: None,
            charged_at: None,
        }
    }

    /// Folds in a sample `value` taken at `ts` (unix seconds, ascending
    /// per series; older samples only feed the histograms).
    pub fn add(&mut self, value: f64, ts: f64) {
        match self.window_end {
            None => self.window_end = Some(ts + WINDOW_SECONDS),
            Some(end) if ts >= end => {
                self.close(end);
                let skipped = ((ts - end) / WINDOW_SECONDS).floor();
                self.window_end = Some(end + (skipped + 1.0) * WINDOW_SECONDS);
            }
            _ => {}
        }
        self.window.push(value);
        for h in &mut self.hists {
            h.add(value, ts);
        }
    }

    /// Charges the window ending at `end` to every candidate (an overrun
    /// is a sample above the request: the limit ratio is the caller's, the
    /// replay assumes none), then recomputes their requests from
    /// everything seen so far.
    fn close(&mut self, end: f64) {
        let decay = match self.charged_at {
            Some(t) => (-(end - t) / COST_HALF_LIFE_SECONDS).exp2(),
            None => 1.0,
        };
        self.charged_at = Some(end);
        self.window.sort_by(f64::total_cmp);
        for (i, c) in self.candidates.iter().enumerate() {
            let cost = &mut self.costs[i];
            *cost = Cost {
                overruns: cost.overruns * decay,
                slack: cost.slack * decay,
                samples: cost.samples * decay,
                changes: cost.changes * decay,
                windows: cost.windows * decay,
            };
            let r = self.requests[i];
            if r > 0.0 {
                let above = self.window.len() - self.window.partition_point(|u| *u <= r);
                cost.overruns += above as f64;
                cost.slack += self
                    .window
                    .iter()
                    .map(|u| ((r - u) / r).max(0.0))
                    .sum::<f64>();
                cost.samples += self.window.len() as f64;
            }
            let new = candidate_request(&self.hists[c.half_life], c);
            if r > 0.0 {
                cost.windows += 1.0;
                if (new - r).abs() > CHANGE_THRESHOLD * r {
                    cost.changes += 1.0;
                }
            }
            self.requests[i] = new;
        }
        self.window.clear();
    }

    /// The cheapest candidate under `weights` (ties: the first, which has
    /// the shorter half-life, lower percentile and margin), its current
    /// request and its cost; `None` before any window was charged.
    pub fn best(&self, weights: &Weights) -> Option<(Candidate, f64, Cost)> {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in self.costs.iter().enumerate() {
            if c.samples <= 0.0 {
                continue;
            }
            let t = c.total(weights);
            if best.is_none_or(|(_, b)| t < b) {
                best = Some((i, t));
            }
        }
        let (i, _) = best?;
        let c = self.candidates[i];
        Some((
            c,
            candidate_request(&self.hists[c.half_life], &c),
            self.costs[i],
        ))
    }

    /// The kind of series this state folds.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// Violation targets of `auto`'s model-based candidates, as fractions.
pub const MODEL_TARGETS: [f64; 5] = [0.001, 0.005, 0.01, 0.02, 0.05];

/// One model-based candidate: the calibrated `predictive` at a violation
/// target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelCandidate {
    /// `predictive`.
    pub strategy: Strategy,
    /// Its violation target, a fraction.
    pub rate: f64,
}

impl ModelCandidate {
    /// Every model-based candidate, in a fixed order: `predictive` at each
    /// of [`MODEL_TARGETS`].
    pub fn all() -> Vec<Self> {
        MODEL_TARGETS
            .map(|rate| Self {
                strategy: Strategy::Predictive,
                rate,
            })
            .to_vec()
    }
}

/// The recent cost of a calibrated model-based candidate at violation
/// target `rate`, out of sample, from its replayed `scores` (one series):
/// the replayed tasks are charged in time order, each allocated at `c ×
/// limit(t) / limit_ratio` where `c` is the calibration factor
/// ([`calibrate::factor`]) of the samples taken before the task started;
/// a task with too few such samples is not charged. Costs are those of
/// [`Autopilot`]: samples above the request, relative slack, and moves of
/// the request by more than [`CHANGE_THRESHOLD`] (within a plan or from
/// one task to the next) per hour, each task decaying with
/// [`COST_HALF_LIFE_SECONDS`] by its age. `None` when no task was charged.
pub fn model_cost(scores: &[Score], rate: f64, limit_ratio: f64) -> Option<Cost> {
    let mut s: Vec<Score> = scores
        .iter()
        .filter(|x| x.ratio.is_finite() && x.ratio >= 0.0 && x.limit > 0.0)
        .copied()
        .collect();
    // Oldest first: the samples before a task's start are a prefix.
    s.sort_by(|a, b| b.age.total_cmp(&a.age));
    let mut starts: Vec<f64> = s.iter().map(|x| x.task_age).collect();
    starts.sort_by(|a, b| b.total_cmp(a));
    starts.dedup();
    let ratio = limit_ratio.max(1.0);
    let mut cost = Cost::default();
    let mut charged = false;
    let mut last: Option<f64> = None;
    for start in starts {
        let before = s.partition_point(|x| x.age > start);
        let earlier: Vec<Score> = s[..before]
            .iter()
            .map(|x| Score {
                age: x.age - start,
                task_age: x.task_age - start,
                ..*x
            })
            .collect();
        let Some(c) = calibrate::factor(&earlier, rate) else {
            continue;
        };
        let w = (-start.max(0.0) / COST_HALF_LIFE_SECONDS).exp2();
        let (mut first, mut latest) = (f64::MIN, f64::MAX);
        for x in s.iter().filter(|x| x.task_age == start) {
            let request = c.factor * x.limit / ratio;
            let used = x.ratio * x.limit;
            cost.samples += w;
            if used > request {
                cost.overruns += w;
            }
            if request > 0.0 {
                cost.slack += w * ((request - used) / request).max(0.0);
            }
            if last.is_some_and(|p| (request - p).abs() > CHANGE_THRESHOLD * p) {
                cost.changes += w;
            }
            last = Some(request);
            first = first.max(x.age);
            latest = latest.min(x.age);
        }
        cost.windows += w * ((first - latest) / WINDOW_SECONDS).max(1.0);
        charged = true;
    }
    charged.then_some(cost)
}

/// What `auto` chose for one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Winner {
    /// The cheapest of the history-based family.
    History,
    /// The model-based candidate at this index of [`ModelCandidate::all`].
    Model(usize),
}

/// The cheapest of the history family's best (`history`, its cost) and
/// the model-based candidates' recent costs (`models`, `None` where a
/// candidate could not be charged or calibrated) under `weights`; ties go
/// to the history, which needs no model. `None` when nothing was charged.
pub fn cheapest(
    history: Option<&Cost>,
    models: &[Option<Cost>],
    weights: &Weights,
) -> Option<Winner> {
    let mut best = history.map(|c| (Winner::History, c.total(weights)));
    for (i, c) in models.iter().enumerate() {
        let Some(c) = c else { continue };
        let t = c.total(weights);
        if best.is_none_or(|(_, b)| t < b) {
            best = Some((Winner::Model(i), t));
        }
    }
    best.map(|b| b.0)
}

fn candidate_request(h: &DecayingHistogram, c: &Candidate) -> f64 {
    h.percentile(c.percentile) * (1.0 + c.margin)
}

/// The weights `params` asks for, over the defaults for `kind`.
pub fn weights(kind: Kind, params: &Params) -> Weights {
    let d = Weights::of(kind);
    Weights {
        overrun: match kind {
            Kind::Memory => params.oom_weight.unwrap_or(d.overrun),
            _ => params.overrun_weight.unwrap_or(d.overrun),
        },
        underrun: d.underrun,
        changes: params.change_weight.unwrap_or(d.changes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A steady series at `level` with rare spikes to `spike`.
    fn fold(kind: Kind, hours: usize, value: impl Fn(usize) -> f64) -> Autopilot {
        let mut a = Autopilot::new(kind);
        for m in 0..hours * 60 {
            a.add(value(m), 1_700_000_000.0 + m as f64 * 60.0);
        }
        a
    }

    #[test]
    fn a_steady_series_gets_a_tight_request() {
        let a = fold(Kind::Cpu, 48, |_| 1.0);
        let (c, r, cost) = a.best(&Weights::of(Kind::Cpu)).unwrap();
        assert!((1.0..1.06).contains(&r), "{c:?} {r}");
        assert_eq!(cost.overrun(), 0.0);
    }

    #[test]
    fn memory_spikes_are_covered_because_an_overrun_is_an_oom_kill() {
        // 1 GB with a 1.5 GB spike every 3 hours.
        let spiky = |m: usize| if m.is_multiple_of(180) { 1.5e9 } else { 1e9 };
        let mem = fold(Kind::Memory, 72, spiky);
        let (_, r, cost) = mem.best(&Weights::of(Kind::Memory)).unwrap();
        assert!(r >= 1.5e9, "{r}");
        assert_eq!(cost.overrun(), 0.0);
        // The same shape as CPU, where an overrun is throttling, may be cut.
        let cpu = fold(Kind::Cpu, 72, |m| spiky(m) / 1e9);
        let (_, r, _) = cpu.best(&Weights::of(Kind::Cpu)).unwrap();
        assert!(r < 1.5, "{r}");
    }

    /// Scores of `tasks` daily tasks of `per` samples each, the newest
    /// ending at the reference: `used(task, i)` over a constant limit 1.
    fn replayed(tasks: usize, per: usize, used: impl Fn(usize, usize) -> f64) -> Vec<Score> {
        let mut out = Vec::new();
        for t in 0..tasks {
            let task_age = (tasks - t) as f64 * 86_400.0;
            for i in 0..per {
                out.push(Score {
                    ratio: used(t, i),
                    age: task_age - i as f64 * 300.0,
                    limit: 1.0,
                    task_age,
                });
            }
        }
        out
    }

    #[test]
    fn a_model_candidate_is_charged_out_of_sample() {
        // Usage doubles from the fifth task on: the tasks after the change
        // are allocated with factors from before it and overrun, which an
        // in-sample charge (one factor fitted to everything) would hide.
        let s = replayed(8, 200, |t, i| {
            let base = if t < 4 { 1.0 } else { 2.0 };
            base * (1.0 + 0.1 * ((i * 7919) % 100) as f64 / 100.0)
        });
        // (A daily task of 200 samples is 17 hour-long blocks, so a 5 %
        // target is calibrated from two tasks on.)
        let c = model_cost(&s, 0.05, 1.0).unwrap();
        assert!(c.overrun() > 0.1, "{c:?}");
        // The first task has nothing before it: not charged.
        let steady = replayed(8, 200, |_, i| 1.0 + 0.1 * ((i * 7919) % 100) as f64 / 100.0);
        let c = model_cost(&steady, 0.05, 1.0).unwrap();
        assert!(c.overrun() < 0.07 && c.underrun() < 0.1, "{c:?}");
        // Of two tasks only the second is charged, at its age's weight.
        let two = model_cost(&steady[..400], 0.1, 1.0).unwrap();
        let w = (-7.0 * 86_400.0 / COST_HALF_LIFE_SECONDS).exp2();
        assert!((two.samples - 200.0 * w).abs() < 1e-9, "{two:?}");
        assert!(model_cost(&steady[..200], 0.1, 1.0).is_none());
        // One task before cannot calibrate 1 %: 17 blocks, 99 needed.
        assert!(model_cost(&steady[..400], 0.01, 1.0).is_none());
    }

    #[test]
    fn the_cheapest_candidate_wins_and_ties_go_to_the_history() {
        let w = Weights::of(Kind::Cpu);
        let cost = |overruns: f64, slack: f64| Cost {
            overruns,
            slack,
            samples: 100.0,
            changes: 0.0,
            windows: 10.0,
        };
        let h = cost(1.0, 30.0);
        assert_eq!(
            cheapest(Some(&h), &[Some(cost(1.0, 20.0)), None], &w),
            Some(Winner::Model(0))
        );
        assert_eq!(cheapest(Some(&h), &[Some(h)], &w), Some(Winner::History));
        assert_eq!(cheapest(None, &[None, Some(h)], &w), Some(Winner::Model(1)));
        assert_eq!(cheapest(None, &[None], &w), None);
        assert_eq!(ModelCandidate::all().len(), MODEL_TARGETS.len());
    }

    #[test]
    fn nothing_is_chosen_before_a_window_was_charged() {
        let a = fold(Kind::Cpu, 1, |_| 1.0);
        assert!(a.best(&Weights::of(Kind::Cpu)).is_none());
    }
}
