//! Predicted distributions: one moment's quantiles (interpolated, with an
//! exponential tail) and the curves of a service and resource over a task.

/// Points a predicted curve is drawn with over the horizon.
pub const CURVE_POINTS: f64 = 120.0;

/// The step, in seconds, that draws a curve over `horizon` seconds with
/// [`CURVE_POINTS`] points (at least one second).
pub fn curve_step(horizon: f64) -> f64 {
    (horizon / CURVE_POINTS).max(1.0)
}

/// A predicted distribution at one moment: ascending quantile levels and
/// their values.
#[derive(Debug, Clone, Copy)]
pub struct Quantiles<'a> {
    /// Levels in (0, 1), ascending.
    pub levels: &'a [f64],
    /// Values at those levels, ascending.
    pub values: &'a [f64],
}

impl Quantiles<'_> {
    /// The value at `level`: linear between the given quantiles, linear
    /// from 0 below the first, and past the last along the exponential tail
    /// the last two imply.
    pub fn value_at(&self, level: f64) -> f64 {
        let (l, v) = (self.levels, self.values);
        let k = l.len();
        if k == 0 {
            return 0.0;
        }
        if level <= l[0] {
            return v[0] * level / l[0];
        }
        for i in 1..k {
            if level <= l[i] {
                let f = (level - l[i - 1]) / (l[i] - l[i - 1]);
                return v[i - 1] + f * (v[i] - v[i - 1]);
            }
        }
        if k < 2 {
            return v[k - 1];
        }
        let scale = self.tail_scale();
        v[k - 1] + scale * ((1.0 - l[k - 1]) / (1.0 - level)).ln()
    }

    /// Share of the distribution above `x` (the inverse of [`value_at`]).
    ///
    /// [`value_at`]: Quantiles::value_at
    pub fn exceedance(&self, x: f64) -> f64 {
        let (l, v) = (self.levels, self.values);
        let k = l.len();
        if k == 0 {
            return 0.0;
        }
        if x < v[0] {
            let below = if v[0] > 0.0 {
                l[0] * x.max(0.0) / v[0]
            } else {
                0.0
            };
            return 1.0 - below;
        }
        for i in 1..k {
            if x < v[i] {
                let f = (x - v[i - 1]) / (v[i] - v[i - 1]);
                return 1.0 - (l[i - 1] + f * (l[i] - l[i - 1]));
            }
        }
        let scale = self.tail_scale();
        if scale <= 0.0 {
            return if x > v[k - 1] { 0.0 } else { 1.0 - l[k - 1] };
        }
        (1.0 - l[k - 1]) * (-(x - v[k - 1]) / scale).exp()
    }

    /// Scale of the exponential tail through the last two quantiles.
    fn tail_scale(&self) -> f64 {
        let (l, v) = (self.levels, self.values);
        let k = l.len();
        if k < 2 {
            return 0.0;
        }
        let d = ((1.0 - l[k - 2]) / (1.0 - l[k - 1])).ln();
        if d <= 0.0 {
            0.0
        } else {
            ((v[k - 1] - v[k - 2]) / d).max(0.0)
        }
    }
}

/// Predicted quantile curves of one service and resource over a task.
#[derive(Debug, Clone)]
pub struct Curves {
    /// Seconds into the task, ascending, from 0.
    pub seconds: Vec<f64>,
    /// Quantile levels, ascending.
    pub levels: Vec<f64>,
    /// `values[t][q]`: the value of level `q` at `seconds[t]`.
    pub values: Vec<Vec<f64>>,
}

impl Curves {
    fn at(&self, t: usize) -> Quantiles<'_> {
        Quantiles {
            levels: &self.levels,
            values: &self.values[t],
        }
    }

    /// The curve at `level` (plus `margin`).
    pub fn level(&self, level: f64, margin: f64) -> Vec<f64> {
        (0..self.seconds.len())
            .map(|t| self.at(t).value_at(level) * (1.0 + margin))
            .collect()
    }

    /// Expected mean relative slack and share above the limit of a
    /// time-varying allocation `alloc(t)` (limits `limit(t)`).
    pub fn expected(&self, request: &[f64], limit: &[f64]) -> (f64, f64) {
        let n = self.seconds.len().max(1) as f64;
        let mut slack = 0.0;
        let mut risk = 0.0;
        for t in 0..self.seconds.len() {
            let q = self.at(t);
            let median = q.value_at(0.5);
            if request[t] > 0.0 {
                slack += ((request[t] - median) / request[t]).max(0.0);
            }
            risk += q.exceedance(limit[t]);
        }
        (slack / n, risk / n)
    }
}

impl Curves {
    /// The constant allocation over points `range` whose expected share of
    /// samples above it is `rate` (bisection on the predicted
    /// distributions; never above the peak of the `1 − rate` curve, where
    /// every point's share is at most `rate`).
    pub fn calibrated(&self, range: std::ops::Range<usize>, rate: f64) -> f64 {
        let n = range.len().max(1) as f64;
        let share = |x: f64| range.clone().map(|t| self.at(t).exceedance(x)).sum::<f64>() / n;
        let mut hi = range
            .clone()
            .map(|t| self.at(t).value_at(1.0 - rate))
            .fold(0.0, f64::max);
        let mut lo = 0.0;
        for _ in 0..48 {
            let mid = 0.5 * (lo + hi);
            if share(mid) > rate {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolation_inverts() {
        let q = Quantiles {
            levels: &[0.5, 0.9, 0.99],
            values: &[1.0, 2.0, 3.0],
        };
        assert!((q.value_at(0.7) - 1.5).abs() < 1e-12);
        assert!(q.value_at(0.999) > 3.0);
        for level in [0.1, 0.5, 0.7, 0.95, 0.99, 0.995, 0.9999] {
            let x = q.value_at(level);
            assert!(
                (q.exceedance(x) - (1.0 - level)).abs() < 1e-9,
                "{level}: {}",
                q.exceedance(x)
            );
        }
    }
}
