//! The model-based strategies: `predictive` (one calibrated level over the
//! horizon) and `plan` (segments of it), over the predictor's curves.

use crate::{
    params::Params,
    quantiles::Curves,
    segments::{Segment, segments},
    strategy::Alloc,
};

/// `predictive`: one level held over the whole horizon, the lowest whose
/// expected share of samples above it is `target_violation_rate` (plus
/// margin).
pub fn predictive(curves: &Curves, params: &Params) -> Alloc {
    let level = 1.0 - params.target_violation_rate;
    let request = curves.calibrated(0..curves.seconds.len(), params.target_violation_rate)
        * (1.0 + params.margin);
    let limit = request * params.limit_ratio;
    let n = curves.seconds.len();
    let (slack, risk) = curves.expected(&vec![request; n], &vec![limit; n]);
    Alloc {
        request,
        limit,
        expected_slack: slack,
        violation_risk: risk,
        samples_used: 0,
        detail: format!(
            "lowest level with an expected {:.2} % of samples above it (p{:.4} of the predicted distributions) over {:.0} s for this mix of services",
            params.target_violation_rate * 100.0,
            level * 100.0,
            curves.seconds.last().copied().unwrap_or(0.0)
        ),
    }
}

/// `plan`: segments of the curve at `1 − target_violation_rate`.
pub fn plan(curves: &Curves, horizon: f64, params: &Params) -> (Vec<Segment>, Alloc) {
    let level = 1.0 - params.target_violation_rate;
    let curve = curves.level(level, params.margin);
    let cuts = segments(
        &curves.seconds,
        &curve,
        horizon,
        params.max_resizes,
        params.min_segment_seconds,
    );
    let n = curves.seconds.len();
    let mut request = vec![0.0; n];
    let mut segs = Vec::with_capacity(cuts.len());
    for (i, &(a, b, _)) in cuts.iter().enumerate() {
        // The cuts follow the curve's shape; each segment's level is then
        // the lowest with the target share of samples above it.
        let peak = curves.calibrated(a..b, params.target_violation_rate) * (1.0 + params.margin);
        request[a..b].iter_mut().for_each(|r| *r = peak);
        segs.push(Segment {
            start: curves.seconds[a],
            end: if i + 1 == cuts.len() {
                horizon.max(curves.seconds[b - 1])
            } else {
                curves.seconds[b]
            },
            request: peak,
            limit: peak * params.limit_ratio,
        });
    }
    let limit: Vec<f64> = request.iter().map(|r| r * params.limit_ratio).collect();
    let (slack, risk) = curves.expected(&request, &limit);
    let peak = segs.iter().map(|s| s.request).fold(0.0, f64::max);
    let alloc = Alloc {
        request: peak,
        limit: peak * params.limit_ratio,
        expected_slack: slack,
        violation_risk: risk,
        samples_used: 0,
        detail: format!(
            "{} (at most {}, each at least {:.0} s) cut along the predicted p{:.4}, each at the lowest level with an expected {:.2} % of samples above it",
            headroom_units::count(segs.len() as u64, "segment"),
            headroom_units::count(u64::from(params.max_resizes), "resize"),
            params.min_segment_seconds,
            level * 100.0,
            params.target_violation_rate * 100.0
        ),
    };
    (segs, alloc)
}
