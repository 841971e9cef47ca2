//! Scoring a replay: an allocation over a task (constant or segments)
//! against the usage sampled, summed per strategy and resource.

use std::collections::BTreeMap;

use crate::{history::History, params::Kind, segments::Segment};

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
pub type Replay = BTreeMap<(usize, String, String), Vec<(f64, f64)>>;

/// The samples of `history` per task, in seconds into their task.
pub fn by_task(history: &History) -> Replay {
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
