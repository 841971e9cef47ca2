//! The Kubernetes VPA's decaying histogram (exponential buckets, weights
//! halving every half-life into the past) and the plain percentile.
//!
//! Source: `vertical-pod-autoscaler/pkg/recommender/util/histogram.go` and
//! `decaying_histogram.go` in kubernetes/autoscaler.

use crate::params::Kind;

/// The plain (unweighted) lower-rank percentile `p` in (0, 100].
pub fn plain_percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// The VPA's histogram: exponentially growing buckets (5 % apart) holding
/// weights that double every half-life towards newer samples (an infinite
/// half-life counts every sample once).
#[derive(Debug, Clone)]
pub struct DecayingHistogram {
    first: f64,
    ratio: f64,
    weights: Vec<f64>,
    total: f64,
    reference: f64,
    half_life: f64,
}

impl DecayingHistogram {
    /// An empty histogram for `kind`, decaying with `half_life` seconds;
    /// weights are relative to `reference` (unix seconds).
    pub fn new(kind: Kind, half_life: f64, reference: f64) -> Self {
        Self {
            first: kind.first_bucket(),
            ratio: 1.05,
            weights: Vec::new(),
            total: 0.0,
            reference,
            half_life,
        }
    }

    fn bucket(&self, value: f64) -> usize {
        if value <= self.first {
            return 0;
        }
        // Bucket i spans [first·(r^i − 1)/(r − 1), first·(r^(i+1) − 1)/(r − 1)).
        let x = value * (self.ratio - 1.0) / self.first + 1.0;
        (x.ln() / self.ratio.ln()).floor() as usize
    }

    /// The lower edge of bucket `i`.
    fn lower(&self, i: usize) -> f64 {
        self.first * (self.ratio.powi(i as i32) - 1.0) / (self.ratio - 1.0)
    }

    /// The upper edge of bucket `i`.
    fn upper(&self, i: usize) -> f64 {
        self.first * (self.ratio.powi(i as i32 + 1) - 1.0) / (self.ratio - 1.0)
    }

    /// Adds a sample taken at `ts`.
    pub fn add(&mut self, value: f64, ts: f64) {
        let mut exponent = (ts - self.reference) / self.half_life;
        if exponent > 200.0 {
            // Renormalise before the weights overflow (the VPA does too).
            let shift = exponent.floor();
            let f = (-shift).exp2();
            self.weights.iter_mut().for_each(|w| *w *= f);
            self.total *= f;
            self.reference += shift * self.half_life;
            exponent -= shift;
        }
        let w = exponent.exp2();
        let i = self.bucket(value.max(0.0)).min(100_000);
        if self.weights.len() <= i {
            self.weights.resize(i + 1, 0.0);
        }
        self.weights[i] += w;
        self.total += w;
    }

    /// The upper edge of the bucket holding the weighted percentile `p` in
    /// (0, 100]; 0 when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let want = self.total * p / 100.0;
        let mut seen = 0.0;
        for (i, w) in self.weights.iter().enumerate() {
            seen += w;
            if seen >= want * (1.0 - 1e-12) && *w > 0.0 {
                return self.upper(i);
            }
        }
        self.upper(self.weights.len().saturating_sub(1))
    }

    /// Mean relative slack of `request` and the share above `limit` over
    /// the histogram's samples (each bucket at its midpoint; the share of a
    /// bucket straddling the limit in proportion).
    pub fn fit(&self, request: f64, limit: f64) -> (f64, f64) {
        if self.total <= 0.0 {
            return (0.0, 0.0);
        }
        let (mut slack, mut over) = (0.0, 0.0);
        for (i, w) in self.weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
            let (lo, hi) = (self.lower(i), self.upper(i));
            if request > 0.0 {
                slack += w * ((request - 0.5 * (lo + hi)) / request).max(0.0);
            }
            over += w * ((hi - limit) / (hi - lo)).clamp(0.0, 1.0);
        }
        (slack / self.total, over / self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_finds_percentiles_within_a_bucket() {
        let mut h = DecayingHistogram::new(Kind::Cpu, 1e9, 0.0);
        for i in 1..=1000 {
            h.add(i as f64 / 1000.0, 0.0);
        }
        let p90 = h.percentile(90.0);
        assert!((0.9..=0.9 * 1.06).contains(&p90), "{p90}");
        // Recent samples outweigh old ones.
        let mut h = DecayingHistogram::new(Kind::Cpu, 3600.0, 10.0 * 3600.0);
        for _ in 0..100 {
            h.add(4.0, 0.0);
            h.add(1.0, 10.0 * 3600.0);
        }
        assert!(h.percentile(90.0) < 1.1);
    }
}
