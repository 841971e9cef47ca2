//! The plan's dynamic programme: a curve cut into few constant segments of
//! least allocated area, each long enough to be worth a resize.

/// A constant stretch of a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Start, seconds into the task.
    pub start: f64,
    /// End (exclusive), seconds into the task.
    pub end: f64,
    /// Request over the stretch.
    pub request: f64,
    /// Limit over the stretch.
    pub limit: f64,
}

/// Cuts `curve` (values at `seconds`, evenly spaced from 0; the last point
/// covers up to `horizon`) into at most `max_resizes + 1` constant segments
/// at the curve's maximum over each, each at least `min_segment` long,
/// minimising the allocated area. A horizon shorter than `min_segment`
/// is one segment: no resize is worth making inside it.
/// Exact: a dynamic programme over segment ends, O(segments · points²).
pub fn segments(
    seconds: &[f64],
    curve: &[f64],
    horizon: f64,
    max_resizes: u32,
    min_segment: f64,
) -> Vec<(usize, usize, f64)> {
    let n = curve.len();
    if n == 0 {
        return Vec::new();
    }
    // Point i covers [seconds[i], seconds[i+1]) (the last up to horizon).
    let end_of = |i: usize| {
        if i + 1 < n {
            seconds[i + 1]
        } else {
            horizon.max(seconds[n - 1])
        }
    };
    let span = |a: usize, b: usize| end_of(b - 1) - seconds[a];
    let whole = span(0, n);
    let long_enough = |a: usize, b: usize| {
        if whole < min_segment {
            a == 0 && b == n
        } else {
            span(a, b) >= min_segment - 1e-9
        }
    };
    let k_max = (max_resizes as usize + 1).min(n);
    const INF: f64 = f64::INFINITY;
    // best[k][b]: least area covering points 0..b with k segments.
    let mut best = vec![vec![INF; n + 1]; k_max + 1];
    let mut from = vec![vec![0usize; n + 1]; k_max + 1];
    best[0][0] = 0.0;
    for k in 1..=k_max {
        for b in 1..=n {
            let mut peak = 0.0f64;
            // Walk a backwards so the segment's peak is kept incrementally.
            for a in (0..b).rev() {
                peak = peak.max(curve[a]);
                if best[k - 1][a] == INF || !long_enough(a, b) {
                    continue;
                }
                let area = best[k - 1][a] + peak * span(a, b);
                if area < best[k][b] {
                    best[k][b] = area;
                    from[k][b] = a;
                }
            }
        }
    }
    let k = (1..=k_max)
        .filter(|&k| best[k][n] < INF)
        .min_by(|&x, &y| best[x][n].total_cmp(&best[y][n]).then(x.cmp(&y)))
        .unwrap_or(1);
    if best[k][n] == INF {
        let peak = curve.iter().copied().fold(0.0, f64::max);
        return vec![(0, n, peak)];
    }
    let mut cuts = Vec::new();
    let (mut k, mut b) = (k, n);
    while k > 0 {
        let a = from[k][b];
        let peak = curve[a..b].iter().copied().fold(0.0, f64::max);
        cuts.push((a, b, peak));
        b = a;
        k -= 1;
    }
    cuts.reverse();
    cuts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest};

    use super::*;

    #[test]
    fn a_plan_follows_a_step_curve_exactly() {
        let seconds: Vec<f64> = (0..60).map(|i| i as f64 * 60.0).collect();
        let curve: Vec<f64> = (0..60).map(|i| if i < 20 { 1.0 } else { 4.0 }).collect();
        let cuts = segments(&seconds, &curve, 3600.0, 3, 300.0);
        assert_eq!(cuts, vec![(0, 20, 1.0), (20, 60, 4.0)]);
        // No resizes allowed: one segment at the peak.
        assert_eq!(
            segments(&seconds, &curve, 3600.0, 0, 300.0),
            vec![(0, 60, 4.0)]
        );
        // Segments longer than the whole horizon: one segment, no resize.
        assert_eq!(
            segments(&seconds, &curve, 3600.0, 3, 4000.0),
            vec![(0, 60, 4.0)]
        );
    }

    proptest! {
        #[test]
        fn plans_respect_their_bounds_and_cover_the_curve(
            curve in prop::collection::vec(0.0f64..10.0, 1..80),
            step in 10.0f64..120.0,
            max_resizes in 0u32..6,
            min_segment in 1.0f64..900.0,
        ) {
            let seconds: Vec<f64> = (0..curve.len()).map(|i| i as f64 * step).collect();
            let horizon = curve.len() as f64 * step;
            let cuts = segments(&seconds, &curve, horizon, max_resizes, min_segment);
            prop_assert!(!cuts.is_empty());
            prop_assert!(cuts.len() <= max_resizes as usize + 1);
            prop_assert_eq!(cuts[0].0, 0);
            prop_assert_eq!(cuts.last().unwrap().1, curve.len());
            for w in cuts.windows(2) {
                prop_assert_eq!(w[0].1, w[1].0);
            }
            for &(a, b, peak) in &cuts {
                let len = if b < curve.len() { seconds[b] } else { horizon } - seconds[a];
                prop_assert!(len >= min_segment - 1e-9 || cuts.len() == 1, "segment of {} s", len);
                for v in &curve[a..b] {
                    prop_assert!(*v <= peak);
                }
            }
            // Never more area than holding the peak throughout.
            let area: f64 = cuts.iter().map(|&(a, b, p)| p * ((if b < curve.len() { seconds[b] } else { horizon }) - seconds[a])).sum();
            prop_assert!(area <= curve.iter().copied().fold(0.0, f64::max) * horizon + 1e-6);
        }
    }
}
