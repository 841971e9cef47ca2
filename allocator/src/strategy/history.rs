//! The history-based strategies: `max` (the prototype's rule) and
//! `percentile` (the VPA's recommender), over a summary built sample by sample.

use std::collections::HashMap;

use crate::{
    histogram::{Buckets, DecayingHistogram, Histogram},
    history::Obs,
    params::{Kind, Params, Peaks},
    render::amount,
    strategy::{
        Alloc,
        auto::{self, Autopilot},
    },
};

/// The VPA's memory aggregation window (`MemoryAggregationInterval`).
pub(crate) const MEMORY_WINDOW_SECONDS: f64 = 86_400.0;

/// Samples a day at one a minute: the VPA's confidence counts days of
/// such samples (`getConfidence` in `logic/estimator.go`).
const SAMPLES_PER_CONFIDENT_DAY: f64 = 60.0 * 24.0;

/// One replica's current memory window (the VPA's `ContainerState`).
#[derive(Debug, Clone, Copy)]
struct Window {
    /// End of the window, unix seconds; its peak is stamped there.
    end: f64,
    /// Largest sample in the window so far.
    peak: f64,
    /// Time of the replica's latest sample.
    last: f64,
}

/// What the history-based strategies need of one series, built sample by
/// sample: decaying and plain histograms, per-task and per-window peaks,
/// the maximum.
#[derive(Debug, Clone)]
pub struct Summary {
    kind: Kind,
    half_life: f64,
    decayed: DecayingHistogram,
    plain: Histogram,
    /// Peak (value, time) per (task, instance): one memory peak per task.
    peaks: HashMap<(u64, u32), (f64, f64)>,
    /// The VPA's peaks: one per replica and 24 h window, kept as it keeps
    /// them (a higher sample replaces its window's peak).
    window_peaks: DecayingHistogram,
    /// Current window per instance, indexed as `instances`.
    windows: Vec<Option<Window>>,
    /// Instance names, indexed as in `peaks`.
    instances: Vec<String>,
    /// Maximum per instance, indexed as `instances`.
    instance_max: Vec<f64>,
    max: f64,
    count: u64,
    /// Samples above zero (throttled ticks, ticks with an OOM kill).
    positive: u64,
    oldest: f64,
    newest: f64,
    /// The `auto` family's replay (usage resources only).
    autopilot: Option<Box<Autopilot>>,
}

impl Summary {
    /// An empty summary of `resource` (by wire name) decaying with
    /// `half_life` seconds; usage resources also fold the `auto` family.
    pub fn for_resource(resource: &str, half_life: f64) -> Self {
        let mut s = Self::new(Kind::of(resource), half_life);
        if !headroom_proto::resource::is_usage(resource) {
            s.autopilot = None;
        }
        s
    }

    /// An empty summary decaying with `half_life` seconds.
    pub fn new(kind: Kind, half_life: f64) -> Self {
        Self {
            autopilot: Some(Box::new(Autopilot::new(kind))),
            kind,
            half_life,
            decayed: DecayingHistogram::new(kind, half_life),
            plain: Histogram::new(Buckets::of(kind)),
            peaks: HashMap::new(),
            window_peaks: DecayingHistogram::new(kind, half_life),
            windows: Vec::new(),
            instances: Vec::new(),
            instance_max: Vec::new(),
            max: 0.0,
            count: 0,
            positive: 0,
            oldest: f64::MAX,
            newest: f64::MIN,
        }
    }

    /// The summary of `history` (tasks keyed by their index).
    pub fn of(history: &[Obs], kind: Kind, half_life: f64) -> Self {
        let mut s = Self::new(kind, half_life);
        for o in history {
            s.add(o.task as u64, o.value, o.ts);
        }
        s
    }

    /// Adds a sample of task `task` taken at `ts` (of one instance).
    pub fn add(&mut self, task: u64, value: f64, ts: f64) {
        self.add_of("", task, value, ts);
    }

    /// Adds a sample of `instance` (a replica) in task `task` taken at `ts`.
    pub fn add_of(&mut self, instance: &str, task: u64, value: f64, ts: f64) {
        let i = match self.instances.iter().position(|n| n == instance) {
            Some(i) => i,
            None => {
                self.instances.push(instance.to_string());
                self.instance_max.push(value);
                self.windows.push(None);
                self.instances.len() - 1
            }
        };
        self.instance_max[i] = self.instance_max[i].max(value);
        if value > 0.0 {
            self.positive += 1;
        }
        self.decayed.add(value, ts);
        self.plain.add(value, 1.0);
        let peak = self.peaks.entry((task, i as u32)).or_insert((value, ts));
        if value > peak.0 {
            *peak = (value, ts);
        }
        self.add_window_peak(i, value, ts);
        if let Some(a) = &mut self.autopilot {
            a.add(value, ts);
        }
        self.max = self.max.max(value);
        self.count += 1;
        self.oldest = self.oldest.min(ts);
        self.newest = self.newest.max(ts);
    }

    /// The VPA's `ContainerState.addMemorySample`: inside the current
    /// window a higher sample replaces the window's peak; past it, the
    /// window moves on by whole windows and the sample opens a new peak.
    /// Out-of-order samples are dropped, as the VPA drops them.
    fn add_window_peak(&mut self, i: usize, value: f64, ts: f64) {
        let w = &mut self.windows[i];
        match w {
            Some(win) if ts < win.last => {}
            Some(win) if ts < win.end => {
                win.last = ts;
                if value > win.peak {
                    if win.peak > 0.0 {
                        self.window_peaks.subtract_weighted(win.peak, 1.0, win.end);
                    }
                    win.peak = value;
                    self.window_peaks.add_weighted(value, 1.0, win.end);
                }
            }
            _ => {
                let end = match w {
                    Some(win) => {
                        let gap = ts - win.end;
                        win.end
                            + (gap / MEMORY_WINDOW_SECONDS).floor() * MEMORY_WINDOW_SECONDS
                            + MEMORY_WINDOW_SECONDS
                    }
                    None => ts + MEMORY_WINDOW_SECONDS,
                };
                *w = Some(Window {
                    end,
                    peak: value,
                    last: ts,
                });
                self.window_peaks.add_weighted(value, 1.0, end);
            }
        }
    }

    /// The kind of resource summarised.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Samples summarised.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value summarised, in the resource's unit.
    pub fn max(&self) -> f64 {
        self.max
    }

    /// Share of the samples above zero, in [0, 1] (0 when empty).
    pub fn positive_share(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.positive as f64 / self.count as f64
        }
    }

    /// Samples above zero (for `oom_kills`: ticks with a kill).
    pub fn positive(&self) -> u64 {
        self.positive
    }

    /// Each instance (replica) with its maximum, in the order first seen.
    pub fn instance_peaks(&self) -> impl Iterator<Item = (&str, f64)> {
        self.instances
            .iter()
            .map(String::as_str)
            .zip(self.instance_max.iter().copied())
    }

    /// The decay this summary was built with, in seconds.
    pub fn half_life(&self) -> f64 {
        self.half_life
    }

    /// Seconds from the first to the last sample (0 when empty).
    pub fn span(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.newest - self.oldest
        }
    }

    /// The plain percentile `p` (a fraction) of every sample.
    pub fn plain_percentile(&self, p: f64) -> f64 {
        self.plain.percentile(p)
    }

    /// The VPA's confidence in this history, in days: the smaller of its
    /// span in days and its samples counted as days at one a minute
    /// (`getConfidence`, `pkg/recommender/logic/estimator.go`).
    pub fn confidence(&self) -> f64 {
        (self.span() / 86_400.0).min(self.count as f64 / SAMPLES_PER_CONFIDENT_DAY)
    }

    /// The answer for `request`: its limit, and its slack and risk over
    /// the summarised samples (nothing observed lies above a limit at or
    /// over the maximum).
    ///
    /// Thin history (under a day of [`Summary::confidence`]) says so in
    /// the explanation, "low confidence: N samples over H hours", and its
    /// risk is at least 3/N: with no violation seen in N samples, 3/N is
    /// the 95 % upper confidence bound of the rate ("rule of three",
    /// Hanley & Lippman-Hand, JAMA 1983).
    fn alloc(&self, request: f64, params: &Params, mut detail: String) -> Alloc {
        let limit = request * params.limit_ratio;
        let (slack, risk) = self.plain.fit(request, limit);
        let mut risk = if limit >= self.max { 0.0 } else { risk };
        if self.confidence() < 1.0 {
            risk = risk.max((3.0 / self.count.max(1) as f64).min(1.0));
            if !detail.contains("low confidence") {
                detail.push_str(&format!(
                    "; low confidence: {} samples over {:.1} hours",
                    self.count,
                    self.span() / 3600.0
                ));
            }
            detail.push_str(" (risk at least 3/N while history is thin)");
        }
        Alloc {
            request,
            limit,
            expected_slack: slack,
            violation_risk: risk,
            samples_used: self.count,
            detail,
        }
    }
}

/// `max`: the historical maximum rounded up to the resource's step.
pub fn max(history: &Summary, params: &Params) -> Alloc {
    let peak = history.max;
    let step = history.kind.round_step();
    let request = ((peak / step).floor() + 1.0) * step;
    history.alloc(
        request,
        params,
        format!(
            "historical maximum {} rounded up to the next {} (the prototype's rule)",
            amount(history.kind, peak),
            amount(history.kind, step)
        ),
    )
}

/// The VPA's estimate of one series: target, lower and upper bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The recommended request.
    pub target: f64,
    /// Lower bound: p50 with the margin, shrunk while confidence is low.
    pub lower: f64,
    /// Upper bound: p95 with the margin, widened while confidence is low
    /// (infinite with no history, as the VPA's 1e14 cap).
    pub upper: f64,
}

/// The VPA's confidence multiplier `(1 + multiplier / confidence)^exponent`
/// (`WithCPUConfidenceMultiplier`, `pkg/recommender/logic/estimator.go`):
/// infinite or 0 with no confidence, depending on the exponent's sign.
pub(crate) fn confidence_multiplier(multiplier: f64, exponent: f64, confidence: f64) -> f64 {
    (1.0 + multiplier / confidence).powf(exponent)
}

/// The VPA recommender's estimators over `history` with `params`'
/// percentiles, margin and Headroom's departures where `params` asks for
/// them: target = percentile × (1 + margin); lower = p50 × (1 + margin) ×
/// (1 + 0.001 / confidence)⁻²; upper = p95 × (1 + margin) × (1 + 1 /
/// confidence); each at least the VPA's minimum when `params.minimum`
/// (`pkg/recommender/logic/recommender.go`, `estimator.go`).
pub fn estimate(history: &Summary, params: &Params) -> Estimate {
    let kind = history.kind;
    let (p, hist);
    let task_peaks;
    match kind {
        Kind::Memory => {
            p = params.memory_percentile / 100.0;
            hist = match params.memory_peaks {
                Peaks::PerWindow => &history.window_peaks,
                Peaks::PerTask => {
                    let mut h = DecayingHistogram::new(kind, history.half_life);
                    let mut peaks: Vec<&(f64, f64)> = history.peaks.values().collect();
                    peaks.sort_by(|a, b| a.1.total_cmp(&b.1));
                    for (value, ts) in peaks {
                        h.add(*value, *ts);
                    }
                    task_peaks = h;
                    &task_peaks
                }
            };
        }
        _ => {
            p = params.cpu_percentile / 100.0;
            hist = &history.decayed;
        }
    }
    let scale = 1.0 + params.margin;
    let confidence = history.confidence();
    let floor = if params.minimum {
        kind.vpa_minimum()
    } else {
        0.0
    };
    let mut target = (hist.percentile(p) * scale).max(floor);
    if params.median_floor {
        target = target.max(history.plain.percentile(0.5));
    }
    let lower =
        (hist.percentile(0.5) * scale * confidence_multiplier(0.001, -2.0, confidence)).max(floor);
    let upper =
        (hist.percentile(0.95) * scale * confidence_multiplier(1.0, 1.0, confidence)).max(floor);
    Estimate {
        target,
        lower: if lower.is_nan() { floor } else { lower },
        upper: if upper.is_nan() { f64::INFINITY } else { upper },
    }
}

fn describe(history: &Summary, params: &Params, e: &Estimate, what: &str) -> String {
    let p = match history.kind {
        Kind::Memory => params.memory_percentile,
        _ => params.cpu_percentile,
    };
    let of = match (history.kind, params.memory_peaks) {
        (Kind::Memory, Peaks::PerTask) => "per-task peaks",
        (Kind::Memory, Peaks::PerWindow) => "per-replica 24 h peaks",
        _ => "samples",
    };
    let mut departures = Vec::new();
    if params.median_floor {
        departures.push("never below the observed median");
    }
    if params.minimum {
        departures.push("at least the VPA's minimum");
    }
    let confidence = history.confidence();
    let hours = history.span() / 3600.0;
    let thin = if confidence < 1.0 {
        format!(
            "; low confidence: {} samples over {hours:.1} hours, so the bounds are wide",
            history.count
        )
    } else {
        String::new()
    };
    format!(
        "{what}: p{p} of {of} in a histogram decaying with a {}h half-life, plus {:.0} % margin{}; bounds [{}, {}] from {:.1} days of confidence{thin}",
        history.half_life / 3600.0,
        params.margin * 100.0,
        if departures.is_empty() {
            String::new()
        } else {
            format!(", {}", departures.join(", "))
        },
        amount(history.kind, e.lower),
        amount(history.kind, e.upper),
        confidence,
    )
}

/// `percentile`: the VPA recommender's target over `history` with
/// Headroom's departures as `params` names them (see [`estimate`]).
pub fn percentile(history: &Summary, params: &Params) -> Alloc {
    let e = estimate(history, params);
    history.alloc(
        e.target,
        params,
        describe(history, params, &e, "percentile"),
    )
}

/// `auto`: the cheapest of the Autopilot family on this series' recent
/// history (see [`crate::strategy::auto`]); with too little history to
/// charge a window, the VPA's recommender instead (said in the detail).
pub fn auto(history: &Summary, params: &Params) -> Alloc {
    let weights = auto::weights(history.kind, params);
    let Some((c, request, cost)) = history.autopilot_best(&weights) else {
        let mut a = vpa(history, params);
        a.detail = format!(
            "auto: under {:.0} h of history to compare candidates on, so the VPA's recommender: {}",
            auto::WINDOW_SECONDS / 3600.0,
            a.detail
        );
        return a;
    };
    let request = request.max(if params.minimum {
        history.kind.vpa_minimum()
    } else {
        0.0
    });
    history.alloc(
        request,
        params,
        format!(
            "auto: {c} had the lowest recent cost {:.4} of {} candidates ({}; {weights})",
            cost.total(&weights),
            auto::family_size(false),
            cost.describe(),
        ),
    )
}

impl Summary {
    /// The history family's cheapest candidate under `weights`, its
    /// request and recent cost (see [`Autopilot::best`]); `None` for a
    /// pressure series or before a window was charged.
    pub fn autopilot_best(
        &self,
        weights: &auto::Weights,
    ) -> Option<(auto::Candidate, f64, auto::Cost)> {
        self.autopilot.as_ref().and_then(|a| a.best(weights))
    }
}

/// `vpa`: the Kubernetes VPA's recommender, faithfully: `params` resolved
/// for [`crate::strategy::Strategy::Vpa`] carry the VPA's choices (no
/// median floor, 24 h window peaks, minimums).
pub fn vpa(history: &Summary, params: &Params) -> Alloc {
    let e = estimate(history, params);
    history.alloc(e.target, params, describe(history, params, &e, "vpa"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop, prop_assert, proptest};

    use super::*;
    use crate::histogram::plain_percentile;

    fn obs(values: &[f64]) -> Vec<Obs> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Obs {
                ts: i as f64 * 60.0,
                task: i / 10,
                value: *v,
            })
            .collect()
    }

    #[test]
    fn max_rounds_up_to_the_next_ten() {
        let a = max(
            &Summary::of(&obs(&[0.2, 0.734, 0.5]), Kind::Cpu, 86_400.0),
            &Params::default(),
        );
        assert!((a.request - 0.74).abs() < 1e-12, "{}", a.request);
        assert!(a.detail.contains("historical maximum 734m"), "{}", a.detail);
        let a = max(
            &Summary::of(&obs(&[15.0 * 1048576.0]), Kind::Memory, 86_400.0),
            &Params::default(),
        );
        assert_eq!(a.request, 20.0 * 1048576.0);
        assert!(
            a.detail
                .contains("maximum 15Mi rounded up to the next 10Mi"),
            "{}",
            a.detail
        );
    }

    #[test]
    fn thin_history_says_low_confidence_and_takes_three_over_n_as_its_risk() {
        let params = Params::default();
        let one = Summary::of(&obs(&[0.5]), Kind::Cpu, 86_400.0);
        let a = percentile(&one, &params);
        assert_eq!(a.violation_risk, 1.0, "3/1 capped at 1");
        assert!(
            a.detail
                .contains("low confidence: 1 samples over 0.0 hours"),
            "{}",
            a.detail
        );
        // 2 days of samples, one a minute: not thin, and nothing above the max.
        let long: Vec<f64> = (0..2880).map(|i| (i % 10) as f64 / 10.0).collect();
        let a = max(&Summary::of(&obs(&long), Kind::Cpu, 86_400.0), &params);
        assert_eq!(a.violation_risk, 0.0);
        assert!(!a.detail.contains("low confidence"), "{}", a.detail);
        let a = max(
            &Summary::of(&obs(&long[..100]), Kind::Cpu, 86_400.0),
            &params,
        );
        assert!(
            (a.violation_risk - 0.03).abs() < 1e-12,
            "3/100: {}",
            a.violation_risk
        );
        assert!(
            a.detail
                .contains("low confidence: 100 samples over 1.6 hours"),
            "{}",
            a.detail
        );
    }

    const DAY: f64 = 86_400.0;
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

    fn vpa_params() -> Params {
        Params::resolve(&Default::default(), crate::strategy::Strategy::Vpa).unwrap()
    }

    /// One sample a minute for `days`, `value(day)` each.
    fn minutely(kind: Kind, days: f64, value: impl Fn(f64) -> f64) -> Summary {
        let mut s = Summary::new(kind, DAY);
        let start = 1_700_000_000.0;
        for m in 0..(days * 1440.0) as u64 {
            let t = m as f64 * 60.0;
            s.add(0, value(t / DAY), start + t);
        }
        s
    }

    // kubernetes/autoscaler vertical-pod-autoscaler/pkg/recommender/logic/
    // estimator_test.go: TestPercentileEstimator (CPU p20 of 1, 2, 3 cores
    // is 1 core; memory p50 of peaks 1e9, 2e9, 3e9 is 2e9; 5 % error).
    #[test]
    fn vpa_percentile_estimator() {
        let params = Params {
            cpu_percentile: 20.0,
            memory_percentile: 50.0,
            margin: 0.0,
            minimum: false,
            ..vpa_params()
        };
        let mut cpu = Summary::new(Kind::Cpu, f64::INFINITY);
        for v in [1.0, 2.0, 3.0] {
            cpu.add(0, v, 0.0);
        }
        let e = estimate(&cpu, &params).target;
        assert!((e - 1.0).abs() <= 0.05, "{e}");
        let mut memory = Summary::new(Kind::Memory, f64::INFINITY);
        for (i, v) in [1e9, 2e9, 3e9].iter().enumerate() {
            memory.add(0, *v, i as f64 * DAY);
        }
        let e = estimate(&memory, &params).target;
        assert!((e - 2e9).abs() <= 0.05 * 2e9, "{e}");
    }

    // estimator_test.go: TestConfidenceMultiplier and
    // TestConfidenceMultiplierNoHistory (9 samples 2 minutes apart give a
    // confidence of 0.00625; 3.14 × (1 + 0.1/0.00625)² = 907.46).
    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is the VPA test's own constant
    fn vpa_confidence_multiplier() {
        let mut s = Summary::new(Kind::Cpu, DAY);
        for i in 0..9 {
            s.add(0, 1.0, i as f64 * 120.0);
        }
        assert_eq!(s.confidence(), 0.00625);
        let x = 3.14 * confidence_multiplier(0.1, 2.0, s.confidence());
        assert!((x - 907.46).abs() < 1e-9, "{x}");
        let empty = Summary::new(Kind::Cpu, DAY);
        assert_eq!(
            confidence_multiplier(1.0, 1.0, empty.confidence()),
            f64::INFINITY
        );
        assert_eq!(confidence_multiplier(1.0, -1.0, empty.confidence()), 0.0);
    }

    // estimator_test.go: TestMarginEstimator, TestMinResourcesEstimator;
    // recommender.go: the pod minimums (25 millicores, 250 MiB).
    #[test]
    fn vpa_margin_and_minimum() {
        let tiny = minutely(Kind::Cpu, 2.0, |_| 0.005);
        assert_eq!(vpa(&tiny, &vpa_params()).request, 0.025);
        let small = minutely(Kind::Memory, 2.0, |_| 11e6);
        assert_eq!(vpa(&small, &vpa_params()).request, 250.0 * 1048576.0);
        let busy = minutely(Kind::Cpu, 2.0, |_| 3.0);
        let r = vpa(&busy, &vpa_params()).request;
        assert!((3.0 * 1.15..3.0 * 1.15 * 1.06).contains(&r), "{r}");
        // Headroom's percentile has no minimum by default.
        assert!(percentile(&tiny, &Params::default()).request < 0.025);
    }

    // Usage dropping from 2.0 to 0.5 cores for the last 3.4 of 7 days: the
    // VPA follows the drop (0.587 cores), a median floor holds the old level.
    #[test]
    fn vpa_follows_a_drop_and_the_median_floor_does_not() {
        let s = minutely(Kind::Cpu, 7.0, |d| if d < 3.6 { 2.0 } else { 0.5 });
        let v = vpa(&s, &vpa_params()).request;
        assert!((v - 0.587).abs() < 0.01, "{v}");
        let p = percentile(&s, &Params::default()).request;
        assert!(p > 2.0, "{p}");
        // The VPA's p20 of the same history is about the 0.5-core level.
        let p20 = Params {
            cpu_percentile: 20.0,
            ..vpa_params()
        };
        let v = vpa(&s, &p20).request;
        assert!(v < 0.6, "{v}");
    }

    // 2 GiB on day 0 then 1 GiB for 7 days in one long task: the VPA's 24 h
    // window peaks decay (1.24e9 bytes); one peak per task does not.
    #[test]
    fn vpa_memory_peaks_are_per_window() {
        let s = minutely(Kind::Memory, 8.0, |d| if d < 1.0 { 2.0 * GIB } else { GIB });
        let v = vpa(&s, &vpa_params()).request;
        assert!((v - 1.24e9).abs() < 0.01 * 1.24e9, "{v}");
        let p = percentile(&s, &Params::default()).request;
        assert!(p > 2.0 * GIB, "{p}");
    }

    proptest! {
        #[test]
        fn percentile_is_never_below_the_observed_median_and_request_le_limit(
            values in prop::collection::vec(0.0f64..64.0, 1..300),
            p in 1.0f64..100.0,
            margin in 0.0f64..1.0,
            ratio in 1.0f64..3.0,
            memory in any::<bool>(),
        ) {
            let params = Params { cpu_percentile: p, memory_percentile: p, margin, limit_ratio: ratio, ..Params::default() };
            let kind = if memory { Kind::Memory } else { Kind::Cpu };
            let history = Summary::of(&obs(&values), kind, params.half_life_seconds);
            let a = percentile(&history, &params);
            let mut v = values.clone();
            prop_assert!(a.request >= plain_percentile(&mut v, 50.0));
            prop_assert!(a.request <= a.limit);
            prop_assert!((0.0..=1.0).contains(&a.expected_slack));
            prop_assert!((0.0..=1.0).contains(&a.violation_risk));
            let m = max(&history, &params);
            prop_assert!(m.request > v.iter().copied().fold(0.0, f64::max) - 1e-9);
            prop_assert!(m.request <= m.limit);
        }
    }
}
