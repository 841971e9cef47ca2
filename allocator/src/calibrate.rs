//! Calibration of the model-based strategies on what happened, not on the
//! training fit: the rule (`predictive` or `plan` at the target violation
//! rate α) is replayed over the series' own recent tasks with the model's
//! curves for each task's mix, and every sample yields a score `s = used /
//! limit(t)`. The allocation is then scaled by `c`, the weighted conformal
//! quantile of the scores at level `1 − α`, so that on the replayed history
//! a share α of samples lies above `c × limit(t)`.
//!
//! The scores come from usage the network never fitted (the tasks held out
//! of its training, and those after its training window): split conformal
//! prediction. The quantile is the weighted one for data that drift
//! (Barber, Candès, Ramdas and Tibshirani, "Conformal prediction beyond
//! exchangeability", Annals of Statistics 2023): sample `i` weighs
//! `2^(−age_i / half-life)`, the half-life the shortest of 1, 2, 4 and 7
//! days that leaves enough samples, the next *block* is counted at +∞, and
//! `c` is the smallest score whose weighted share reaches `1 − α`. A block
//! is one task's samples within an hour of it ([`BLOCK_SECONDS`]): they
//! share the task's intensity and mix and miss together, so the next one
//! weighs a whole block's samples (1 each), not one sample's: conformal
//! risk control with a block's share of samples above the limit as the
//! risk (Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk
//! Control", ICLR 2024). When the weights cannot reach it (too few recent
//! blocks for so small an α: about (1 − α)/α) the series cannot be
//! calibrated alone: it borrows the scores of the same resource's other
//! series in the request ([`Pools`]), and with none falls back to the
//! history-based strategy.

/// Half-life of the calibration's weights when no shorter one leaves
/// enough samples: a week, so that a 0.1 % target can be calibrated from 8
/// days of five-minute samples.
pub const HALF_LIFE_SECONDS: f64 = 7.0 * 86_400.0;

/// Shorter half-lives tried first (1, 2 and 4 days): the first whose
/// effective number of scores is at least four times [`needed`] is used.
pub const ADAPTIVE_HALF_LIVES_SECONDS: [f64; 3] = [86_400.0, 2.0 * 86_400.0, 4.0 * 86_400.0];

/// One replayed sample: its score, its age and the task it ran in.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// `used / limit` at that moment (`used` over the uncalibrated limit).
    pub ratio: f64,
    /// Seconds before the calibration's reference time (the newest sample
    /// or the backtest's split).
    pub age: f64,
    /// The uncalibrated limit at that moment, in the resource's unit.
    pub limit: f64,
    /// Seconds before the reference time at which the sample's task
    /// started: the samples of one task share it.
    pub task_age: f64,
}

/// The outcome of calibrating one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// What the uncalibrated request and limit are multiplied by.
    pub factor: f64,
    /// Scores that made it (its own, or the pool's).
    pub scores: usize,
    /// Their effective number (Σw)² / Σw², after decay.
    pub effective: f64,
    /// Whether the scores were borrowed from the resource's other series.
    pub pooled: bool,
}

/// The longest stretch of one task counted as one exchangeable block: an
/// hour. Samples of one task share its intensity and mix (a simulated
/// task's memory plateau, a VM's day), so they are not exchangeable one by
/// one; stretches an hour apart in a long task mostly are.
pub const BLOCK_SECONDS: f64 = 3600.0;

/// The blocks `scores` come from: (task, hour of the task), see
/// [`BLOCK_SECONDS`].
pub fn blocks(scores: &[Score]) -> usize {
    let mut seen: std::collections::HashSet<(u64, i64)> = std::collections::HashSet::new();
    for s in scores {
        let into = (s.task_age - s.age).max(0.0);
        seen.insert((s.task_age.to_bits(), (into / BLOCK_SECONDS).floor() as i64));
    }
    seen.len()
}

/// The weighted conformal quantile of `scores` at level `1 − rate` (see
/// the module doc), with `HALF_LIFE_SECONDS` decay, the next block counted
/// at +∞ with the mean block's weight; `None` when the weights cannot
/// reach it or there are no scores.
pub fn factor(scores: &[Score], rate: f64) -> Option<Calibration> {
    factor_in_blocks(scores, rate, blocks(scores))
}

/// [`factor`] of `scores` that come from `blocks` exchangeable blocks
/// (one series' tasks, or a pool's series × tasks).
fn factor_in_blocks(scores: &[Score], rate: f64, blocks: usize) -> Option<Calibration> {
    // A new task's samples miss together: the next observation at +∞ is a
    // whole block of them (its mean size), not one sample. This is
    // conformal risk control with the risk a block's share of samples
    // above the limit, bounded by 1 (Angelopoulos, Bates, Fisch, Lei and
    // Schuster, "Conformal Risk Control", ICLR 2024): with 20 tasks of a
    // flat memory plateau, a per-sample quantile promised 1 % and a new task
    // above all 20 (1 in 21) missed ~5 %.
    let block = scores.len() as f64 / blocks.max(1) as f64;
    // Usage drifts: the shortest half-life that still leaves four times the
    // blocks the level needs follows it best.
    for h in ADAPTIVE_HALF_LIVES_SECONDS {
        if let Some(c) = factor_with(scores, rate, h, block)
            && c.effective >= 4.0 * needed(rate) * block
        {
            return Some(c);
        }
    }
    factor_with(scores, rate, HALF_LIFE_SECONDS, block)
}

fn factor_with(scores: &[Score], rate: f64, half_life: f64, block: f64) -> Option<Calibration> {
    if scores.is_empty() {
        return None;
    }
    let mut w: Vec<(f64, f64)> = scores
        .iter()
        .filter(|s| s.ratio.is_finite() && s.ratio >= 0.0)
        .map(|s| (s.ratio, (-s.age.max(0.0) / half_life).exp2()))
        .collect();
    if w.is_empty() {
        return None;
    }
    w.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sum: f64 = w.iter().map(|x| x.1).sum();
    let squares: f64 = w.iter().map(|x| x.1 * x.1).sum();
    // The next block weighs its samples' 1 each and sits at +∞.
    let total = sum + block.max(1.0);
    let want = (1.0 - rate) * total;
    let mut seen = 0.0;
    for (ratio, weight) in &w {
        seen += weight;
        if seen >= want * (1.0 - 1e-12) {
            return Some(Calibration {
                factor: *ratio,
                scores: w.len(),
                effective: sum * sum / squares,
                pooled: false,
            });
        }
    }
    None
}

/// The calibration of a series from its own scores, else from `pool` (the
/// same resource's scores across the request's series); `None` when
/// neither can reach the level.
pub fn own_or_pooled(own: &[Score], pool: &[Score], rate: f64) -> Option<Calibration> {
    factor(own, rate).or_else(|| pooled(own, pool, rate))
}

/// The calibration from `pool`, for a series whose own `own` scores are
/// too few: only when it has some history at all (a series never seen
/// running falls back instead).
pub fn pooled(own: &[Score], pool: &[Score], rate: f64) -> Option<Calibration> {
    pooled_in_blocks(own, pool, rate, blocks(pool)).map(|c| at_least_own(c, own, rate))
}

/// A borrowed calibration, never below the series' own replayed quantile
/// at `1 − rate` counted per sample (the optimistic level, which the
/// series' own blocks could not certify), or its highest score where even
/// that cannot be reached. Without this floor a stricter target could
/// give a lower allocation: the pool of six VMs gave one ×1.03 at 0.6 %
/// where its own history gave ×6.3 at 1 % (helper trial).
fn at_least_own(c: Calibration, own: &[Score], rate: f64) -> Calibration {
    let floor = factor_with(own, rate, HALF_LIFE_SECONDS, 1.0)
        .map(|o| o.factor)
        .or_else(|| {
            own.iter()
                .map(|s| s.ratio)
                .filter(|r| r.is_finite())
                .reduce(f64::max)
        })
        .unwrap_or(0.0);
    Calibration {
        factor: c.factor.max(floor),
        ..c
    }
}

/// [`pooled`] with the pool's block count given (its series' blocks
/// summed: two series' samples of one task are two blocks).
fn pooled_in_blocks(
    own: &[Score],
    pool: &[Score],
    rate: f64,
    blocks: usize,
) -> Option<Calibration> {
    if own.is_empty() {
        return None;
    }
    factor_in_blocks(pool, rate, blocks).map(|c| Calibration { pooled: true, ..c })
}

/// The scores of every series of each resource pooled, for the series too
/// thin to calibrate alone ([`own_or_pooled`]). A pool's calibration at a
/// rate is computed once and kept: calibrating the thin series of a
/// thousand-service request against one pool sorts the pool once, not once
/// per series (which made a snapshot's evaluation of 2,200 series outlast
/// ten minutes).
#[derive(Debug, Default)]
pub struct Pools {
    /// Per resource: the pooled scores and their blocks (each series'
    /// blocks, summed).
    scores: std::collections::HashMap<String, (Vec<Score>, usize)>,
    /// (resource, rate's bits) → the pool's calibration.
    memo: std::sync::Mutex<std::collections::HashMap<(String, u64), Option<Calibration>>>,
}

impl Pools {
    /// Pools `scores` (per (service, resource)) by resource.
    pub fn of(scores: &std::collections::HashMap<(String, String), Vec<Score>>) -> Self {
        let mut pooled: std::collections::HashMap<String, (Vec<Score>, usize)> =
            std::collections::HashMap::new();
        for ((_, resource), s) in scores {
            let (all, n) = pooled.entry(resource.clone()).or_default();
            all.extend(s);
            *n += blocks(s);
        }
        Self {
            scores: pooled,
            memo: Default::default(),
        }
    }

    /// [`own_or_pooled`] of a series of `resource` with its `own` scores,
    /// the pool's calibration computed at most once per (resource, rate).
    pub fn calibrate(&self, own: &[Score], resource: &str, rate: f64) -> Option<Calibration> {
        if let Some(c) = factor(own, rate) {
            return Some(c);
        }
        if own.is_empty() {
            return None;
        }
        let key = (resource.to_string(), rate.to_bits());
        let mut memo = self
            .memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (pool, n) = self
            .scores
            .get(resource)
            .map_or((&[][..], 0), |(s, n)| (s.as_slice(), *n));
        let shared = *memo
            .entry(key)
            .or_insert_with(|| pooled_in_blocks(own, pool, rate, n));
        shared.map(|c| at_least_own(c, own, rate))
    }
}

/// The least effective number of scores that can calibrate `rate`: the
/// next sample's weight 1 must fit in the share `rate` above the quantile.
pub fn needed(rate: f64) -> f64 {
    (1.0 - rate) / rate
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{prop, prop_assert, proptest};

    use super::*;

    /// Scores each of a task of its own (one block each), the tasks
    /// numbered from `first`.
    fn fresh_from(ratios: &[f64], first: usize) -> Vec<Score> {
        ratios
            .iter()
            .enumerate()
            .map(|(i, r)| Score {
                ratio: *r,
                // Started i days before, sampled now: fresh, one block each.
                task_age: ((first + i) * 86_400) as f64,
                ..Score::default()
            })
            .collect()
    }

    fn fresh(ratios: &[f64]) -> Vec<Score> {
        fresh_from(ratios, 0)
    }

    #[test]
    fn a_borrowed_calibration_never_goes_below_the_series_own_level() {
        // A thin series whose usage runs at 6× its curves, in a pool of
        // series at 1×: the pool alone would give it ×1.
        let thin = fresh_from(&[6.0, 6.2, 6.3], 9000);
        let pool: Vec<f64> = (0..2000).map(|i| 0.5 + (i % 50) as f64 / 100.0).collect();
        let mut all = fresh(&pool);
        all.extend(thin.clone());
        let c = own_or_pooled(&thin, &all, 0.01).unwrap();
        assert!(c.pooled);
        assert_eq!(c.factor, 6.3);
        let pools = Pools::of(&std::collections::HashMap::from([
            (("thin".to_string(), "cpu".to_string()), thin.clone()),
            (("rest".to_string(), "cpu".to_string()), fresh(&pool)),
        ]));
        assert_eq!(
            pools.calibrate(&thin, "cpu", 0.01).map(|c| c.factor),
            Some(6.3)
        );
    }

    #[test]
    fn a_new_task_counts_as_a_whole_block() {
        // Flat tasks of 20 samples each at the task's own level (a memory
        // plateau): task j at j + 1.
        // Task j started j + 1 hours ago; its samples 60 s apart.
        let tasks = |n: usize| -> Vec<Score> {
            (0..n)
                .flat_map(|j| {
                    let started = (j + 1) as f64 * 3600.0;
                    (0..20).map(move |k| Score {
                        ratio: (j + 1) as f64,
                        age: started - 60.0 * k as f64,
                        task_age: started,
                        ..Score::default()
                    })
                })
                .collect()
        };
        let twenty = tasks(20);
        assert_eq!(blocks(&twenty), 20);
        // Counted sample by sample, 400 scores could promise 4 %; as 20
        // tasks they cannot: a new task lies above all 20 one time in 21.
        assert!(factor_with(&twenty, 0.04, HALF_LIFE_SECONDS, 1.0).is_some());
        assert_eq!(factor(&twenty, 0.04), None);
        // 30 tasks can: the level of the highest.
        assert_eq!(factor(&tasks(30), 0.04).map(|c| c.factor), Some(30.0));
    }

    #[test]
    fn the_factor_is_the_conformal_quantile() {
        // 999 scores 1..=999 and the next at +∞: the 99 % level needs
        // 0.99 × 1000 = 990 of the weight, reached at the 990th score.
        let s: Vec<f64> = (1..=999).map(f64::from).collect();
        let c = factor(&fresh(&s), 0.01).unwrap();
        assert_eq!(c.factor, 990.0);
        assert_eq!(c.scores, 999);
        // Too few scores for 0.1 %: 999 weigh less than 999 + 1 needs.
        assert!(factor(&fresh(&s[..500]), 0.001).is_none());
        assert!(needed(0.001) > 500.0);
    }

    #[test]
    fn old_scores_weigh_less() {
        // Old high scores, recent low ones: the factor follows the recent.
        let mut s = Vec::new();
        for i in 0..2000 {
            // Each sample a task of its own (one block each).
            s.push(Score {
                ratio: 2.0,
                age: 42.0 * 86_400.0 + i as f64,
                task_age: 42.0 * 86_400.0 + i as f64,
                ..Score::default()
            });
            s.push(Score {
                ratio: 1.0,
                age: i as f64,
                task_age: i as f64,
                ..Score::default()
            });
        }
        let c = factor(&s, 0.05).unwrap();
        assert_eq!(c.factor, 1.0);
        assert!(c.effective < 4000.0);
    }

    #[test]
    fn a_thin_series_borrows_and_a_new_one_falls_back() {
        let pool: Vec<f64> = (1..=1000).map(f64::from).collect();
        let thin = fresh(&[3.0, 4.0]);
        let c = own_or_pooled(&thin, &fresh(&pool), 0.01).unwrap();
        assert!(c.pooled);
        assert!(own_or_pooled(&[], &fresh(&pool), 0.01).is_none());
    }

    #[test]
    fn pools_answer_as_own_or_pooled_per_resource() {
        use std::collections::HashMap;
        let ratios: Vec<f64> = (1..=1000).map(f64::from).collect();
        let scores: HashMap<(String, String), Vec<Score>> = HashMap::from([
            (("a".into(), "cpu".into()), fresh(&ratios)),
            (("b".into(), "cpu".into()), fresh_from(&[3.0, 4.0], 5000)),
            (("c".into(), "memory".into()), fresh(&[5.0; 20])),
        ]);
        let pools = Pools::of(&scores);
        let mut cpu = fresh(&ratios);
        cpu.extend(fresh_from(&[3.0, 4.0], 5000));
        for rate in [0.01, 0.001] {
            for (key, own) in &scores {
                let pool = if key.1 == "cpu" {
                    cpu.clone()
                } else {
                    own.clone()
                };
                // Twice: the second answer comes from the memo.
                for _ in 0..2 {
                    assert_eq!(
                        pools.calibrate(own, &key.1, rate),
                        own_or_pooled(own, &pool, rate),
                        "{key:?} at {rate}"
                    );
                }
            }
        }
        // A series with no scores of its own still falls back.
        assert_eq!(pools.calibrate(&[], "cpu", 0.01), None);
    }

    proptest! {
        /// On the scores it was fitted to, at most a share `rate` lies
        /// above the factor (the conformal guarantee, in sample).
        #[test]
        fn at_most_the_rate_lies_above(
            ratios in prop::collection::vec(0.0f64..10.0, 50..600),
            rate in 0.01f64..0.5,
        ) {
            if let Some(c) = factor(&fresh(&ratios), rate) {
                let above = ratios.iter().filter(|r| **r > c.factor).count();
                prop_assert!(above as f64 <= rate * (ratios.len() + 1) as f64);
            }
        }
    }
}
