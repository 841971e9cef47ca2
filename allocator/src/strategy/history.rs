//! The history-based strategies: `max` (the prototype's rule) and
//! `percentile` (the VPA's recommender), over a summary built sample by sample.

use std::collections::HashMap;

use crate::{
    histogram::DecayingHistogram,
    history::Obs,
    params::{Kind, Params},
    strategy::Alloc,
};

/// What the history-based strategies need of one series, built sample by
/// sample: decaying and plain histograms, per-task peaks, the maximum.
#[derive(Debug, Clone)]
pub struct Summary {
    kind: Kind,
    half_life: f64,
    decayed: Option<DecayingHistogram>,
    plain: DecayingHistogram,
    /// Peak (value, time) per (task, instance): the VPA takes one memory
    /// peak per container and aggregation window.
    peaks: HashMap<(u64, u32), (f64, f64)>,
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
}

impl Summary {
    /// An empty summary decaying with `half_life` seconds.
    pub fn new(kind: Kind, half_life: f64) -> Self {
        Self {
            kind,
            half_life,
            decayed: None,
            plain: DecayingHistogram::new(kind, f64::INFINITY, 0.0),
            peaks: HashMap::new(),
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
                self.instances.len() - 1
            }
        };
        self.instance_max[i] = self.instance_max[i].max(value);
        if value > 0.0 {
            self.positive += 1;
        }
        let half_life = self.half_life;
        let kind = self.kind;
        self.decayed
            .get_or_insert_with(|| DecayingHistogram::new(kind, half_life, ts))
            .add(value, ts);
        self.plain.add(value, 0.0);
        let peak = self.peaks.entry((task, i as u32)).or_insert((value, ts));
        if value > peak.0 {
            *peak = (value, ts);
        }
        self.max = self.max.max(value);
        self.count += 1;
        self.oldest = self.oldest.min(ts);
        self.newest = self.newest.max(ts);
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

    /// The answer for `request`: its limit, and its slack and risk over
    /// the summarised samples (nothing observed lies above a limit at or
    /// over the maximum).
    fn alloc(&self, request: f64, params: &Params, detail: String) -> Alloc {
        let limit = request * params.limit_ratio;
        let (slack, risk) = self.plain.fit(request, limit);
        Alloc {
            request,
            limit,
            expected_slack: slack,
            violation_risk: if limit >= self.max { 0.0 } else { risk },
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
            "historical maximum {peak:.4} rounded up to the next {step} (the prototype's rule)"
        ),
    )
}

/// `percentile`: the VPA recommender over `history` (see the module doc).
/// The request is the target percentile plus the margin, never below the
/// plain median of the history; the lower (p50) and upper (p95) bounds
/// widen as the history is shorter than a week, as the VPA's confidence.
pub fn percentile(history: &Summary, params: &Params) -> Alloc {
    let kind = history.kind;
    let (p, what, peaks);
    let hist = match kind {
        Kind::Memory => {
            // Peaks per task and replica, each at the time it happened.
            let mut h = DecayingHistogram::new(kind, history.half_life, history.newest);
            for (value, ts) in history.peaks.values() {
                h.add(*value, *ts);
            }
            peaks = h;
            (p, what) = (params.memory_percentile, "per-task peaks");
            &peaks
        }
        _ => {
            (p, what) = (params.cpu_percentile, "samples");
            match &history.decayed {
                Some(h) => h,
                None => &history.plain,
            }
        }
    };
    let median = history.plain.percentile(50.0);
    let scale = 1.0 + params.margin;
    let target = hist.percentile(p) * scale;
    let request = target.max(median);
    let days = ((history.newest - history.oldest) / 86_400.0).max(1.0 / 24.0);
    let lower = hist.percentile(50.0) * scale * (1.0 + 0.001 / days).powi(-2);
    let upper = hist.percentile(95.0) * scale * (1.0 + 1.0 / days);
    history.alloc(
        request,
        params,
        format!(
            "p{p} of {what} in a histogram decaying with a {}h half-life, plus {:.0} % margin; bounds [{lower:.4}, {upper:.4}] from {days:.1} days of history",
            history.half_life / 3600.0,
            params.margin * 100.0
        ),
    )
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
        assert_eq!(a.violation_risk, 0.0);
        let a = max(
            &Summary::of(&obs(&[15.0 * 1048576.0]), Kind::Memory, 86_400.0),
            &Params::default(),
        );
        assert_eq!(a.request, 20.0 * 1048576.0);
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
