//! The Kubernetes VPA's histograms, faithfully: bucketing schemes (linear
//! and exponential), bucket weights with an epsilon below which a bucket
//! is empty, the percentile as the end of the bucket holding it, and the
//! decaying variant whose weights double every half-life towards newer
//! samples. The plain percentile of raw values sits beside them.
//!
//! Source: `vertical-pod-autoscaler/pkg/recommender/util/histogram.go`,
//! `histogram_options.go` and `decaying_histogram.go` in
//! kubernetes/autoscaler; their unit tests are ported in this module's
//! tests, value for value.

use crate::params::Kind;

/// The VPA's ratio between consecutive exponential buckets (5 % apart).
pub const BUCKET_GROWTH: f64 = 1.05;
/// Weight below which the VPA counts a bucket as empty.
pub const EPSILON: f64 = 1e-4;
/// The VPA renormalises a decaying histogram before its weights pass
/// 2^100.
const MAX_DECAY_EXPONENT: f64 = 100.0;

/// The plain (unweighted) lower-rank percentile `p` in (0, 100].
pub fn plain_percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A bucketing scheme: where each bucket starts, how many there are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Buckets {
    /// Buckets of `size` from 0; the last one is unbounded.
    Linear {
        /// Width of a bucket.
        size: f64,
        /// Number of buckets.
        count: usize,
        /// Weight below which a bucket is empty.
        epsilon: f64,
    },
    /// Bucket `i > 0` starts at `first · (ratioⁱ − 1) / (ratio − 1)`; the
    /// last one is unbounded.
    Exponential {
        /// Width of the first bucket.
        first: f64,
        /// Growth between consecutive buckets.
        ratio: f64,
        /// Number of buckets.
        count: usize,
        /// Weight below which a bucket is empty.
        epsilon: f64,
    },
}

impl Buckets {
    /// Linear buckets of `size` covering `[0, max]` (the VPA's
    /// `NewLinearHistogramOptions`).
    pub fn linear(max: f64, size: f64, epsilon: f64) -> Self {
        Self::Linear {
            size,
            count: (max / size).ceil() as usize + 1,
            epsilon,
        }
    }

    /// Exponential buckets covering `[0, max]` (the VPA's
    /// `NewExponentialHistogramOptions`).
    pub fn exponential(max: f64, first: f64, ratio: f64, epsilon: f64) -> Self {
        let count = ((max * (ratio - 1.0) / first + 1.0).ln() / ratio.ln()).ceil() as usize + 1;
        Self::Exponential {
            first,
            ratio,
            count,
            epsilon,
        }
    }

    /// The VPA's options for `kind`: CPU from 0.01 to 1,000 cores, memory
    /// from 10 MB to 1 TB (`model/aggregations_config.go`); IO, which the
    /// VPA does not size, from 1 KiB/s to 1 TB/s the same way.
    pub fn of(kind: Kind) -> Self {
        match kind {
            Kind::Cpu => Self::exponential(1000.0, 0.01, BUCKET_GROWTH, EPSILON),
            Kind::Memory => Self::exponential(1e12, 1e7, BUCKET_GROWTH, EPSILON),
            Kind::Io => Self::exponential(1e12, 1024.0, BUCKET_GROWTH, EPSILON),
        }
    }

    /// Number of buckets.
    pub fn count(&self) -> usize {
        match *self {
            Self::Linear { count, .. } | Self::Exponential { count, .. } => count,
        }
    }

    fn epsilon(&self) -> f64 {
        match *self {
            Self::Linear { epsilon, .. } | Self::Exponential { epsilon, .. } => epsilon,
        }
    }

    /// The bucket holding `value` (values below 0 in the first, above the
    /// range in the last).
    pub fn find(&self, value: f64) -> usize {
        let last = self.count() - 1;
        let b = match *self {
            Self::Linear { size, .. } => (value / size).floor(),
            Self::Exponential { first, ratio, .. } => {
                if value < first {
                    return 0;
                }
                ((value * (ratio - 1.0) / first + 1.0).ln() / ratio.ln()).floor()
            }
        };
        if b.is_nan() || b < 0.0 {
            0
        } else {
            (b as usize).min(last)
        }
    }

    /// Where bucket `i` starts (0 for the first).
    pub fn start(&self, i: usize) -> f64 {
        if i == 0 {
            return 0.0;
        }
        match *self {
            Self::Linear { size, .. } => size * i as f64,
            Self::Exponential { first, ratio, .. } => {
                first * (ratio.powi(i as i32) - 1.0) / (ratio - 1.0)
            }
        }
    }

    /// Where bucket `i` ends; the last bucket, unbounded, is taken as wide
    /// as the one before it.
    fn end(&self, i: usize) -> f64 {
        if i + 1 < self.count() {
            self.start(i + 1)
        } else {
            2.0 * self.start(i) - self.start(i.saturating_sub(1))
        }
    }
}

/// The VPA's histogram: a weight per bucket, grown as samples arrive.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Buckets,
    weights: Vec<f64>,
    total: f64,
    /// First bucket at or above epsilon (the last bucket when empty).
    min: usize,
    /// Last bucket at or above epsilon (0 when empty).
    max: usize,
}

impl Histogram {
    /// An empty histogram over `buckets`.
    pub fn new(buckets: Buckets) -> Self {
        Self {
            buckets,
            weights: Vec::new(),
            total: 0.0,
            min: buckets.count() - 1,
            max: 0,
        }
    }

    fn weight(&self, i: usize) -> f64 {
        self.weights.get(i).copied().unwrap_or(0.0)
    }

    /// Adds `value` with `weight` (negative weights count as 0).
    pub fn add(&mut self, value: f64, weight: f64) {
        let weight = weight.max(0.0);
        let b = self.buckets.find(value);
        if self.weights.len() <= b {
            self.weights.resize(b + 1, 0.0);
        }
        self.weights[b] += weight;
        self.total += weight;
        let eps = self.buckets.epsilon();
        if b < self.min && self.weights[b] >= eps {
            self.min = b;
        }
        if b > self.max && self.weights[b] >= eps {
            self.max = b;
        }
    }

    /// Removes `value` with `weight`; a bucket never goes below 0.
    pub fn subtract(&mut self, value: f64, weight: f64) {
        let b = self.buckets.find(value);
        if b >= self.weights.len() {
            return;
        }
        let eps = self.buckets.epsilon();
        let weight = if weight.max(0.0) > self.weights[b] - eps {
            self.weights[b]
        } else {
            weight.max(0.0)
        };
        self.total -= weight;
        self.weights[b] -= weight;
        self.update_bounds();
    }

    /// Multiplies every weight by `factor` (percentiles do not change).
    fn scale(&mut self, factor: f64) {
        self.weights.iter_mut().for_each(|w| *w *= factor);
        self.total *= factor;
        self.update_bounds();
    }

    fn update_bounds(&mut self) {
        let eps = self.buckets.epsilon();
        let last = self.buckets.count() - 1;
        while self.weight(self.min) < eps && self.min < last {
            self.min += 1;
        }
        while self.weight(self.max) < eps && self.max > 0 {
            self.max -= 1;
        }
    }

    /// No bucket at or above epsilon.
    pub fn is_empty(&self) -> bool {
        self.weight(self.min) < self.buckets.epsilon()
    }

    /// The end of the bucket where the cumulative weight reaches `p` ×
    /// total, `p` a fraction (below 0: the first non-empty bucket's end;
    /// above 1: the last's); the start of the last, unbounded, bucket; 0
    /// when empty.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let threshold = p * self.total;
        let mut seen = 0.0;
        let mut b = self.min;
        while b < self.max {
            seen += self.weight(b);
            if seen >= threshold {
                break;
            }
            b += 1;
        }
        if b < self.buckets.count() - 1 {
            self.buckets.start(b + 1)
        } else {
            self.buckets.start(b)
        }
    }

    /// Mean relative slack of `request` and the share above `limit` over
    /// the histogram's weight (each bucket at its midpoint; the share of a
    /// bucket straddling the limit in proportion).
    pub fn fit(&self, request: f64, limit: f64) -> (f64, f64) {
        if self.total <= 0.0 {
            return (0.0, 0.0);
        }
        let (mut slack, mut over) = (0.0, 0.0);
        for (i, w) in self.weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
            let (lo, hi) = (self.buckets.start(i), self.buckets.end(i));
            if request > 0.0 {
                slack += w * ((request - 0.5 * (lo + hi)) / request).max(0.0);
            }
            over += w * ((hi - limit) / (hi - lo)).clamp(0.0, 1.0);
        }
        (slack / self.total, over / self.total)
    }
}

/// The VPA's decaying histogram: a sample at `t` weighs `2^((t − ref) /
/// half_life)`, `ref` a multiple of the half-life moved forward (weights
/// rescaled) before the exponent passes 100. An infinite half-life counts
/// every sample alike.
#[derive(Debug, Clone)]
pub struct DecayingHistogram {
    histogram: Histogram,
    half_life: f64,
    /// Unix seconds; `None` until the first sample.
    reference: Option<f64>,
}

impl DecayingHistogram {
    /// An empty histogram with the VPA's buckets for `kind`, decaying with
    /// `half_life` seconds.
    pub fn new(kind: Kind, half_life: f64) -> Self {
        Self::with_buckets(Buckets::of(kind), half_life)
    }

    /// An empty histogram over `buckets`, decaying with `half_life`
    /// seconds.
    pub fn with_buckets(buckets: Buckets, half_life: f64) -> Self {
        Self {
            histogram: Histogram::new(buckets),
            half_life,
            reference: None,
        }
    }

    fn factor(&mut self, ts: f64) -> f64 {
        if !self.half_life.is_finite() {
            return 1.0;
        }
        let h = self.half_life;
        let reference = match self.reference {
            Some(r) if ts <= r + h * MAX_DECAY_EXPONENT => r,
            old => {
                let new = (ts / h).round() * h;
                if let Some(old) = old {
                    self.histogram.scale(((old - new) / h).round().exp2());
                }
                self.reference = Some(new);
                new
            }
        };
        ((ts - reference) / h).exp2()
    }

    /// Adds `value` seen at `ts` (unix seconds) with weight 1.
    pub fn add(&mut self, value: f64, ts: f64) {
        self.add_weighted(value, 1.0, ts);
    }

    /// Adds `value` seen at `ts` with `weight`.
    pub fn add_weighted(&mut self, value: f64, weight: f64, ts: f64) {
        let f = self.factor(ts);
        self.histogram.add(value, weight * f);
    }

    /// Removes `value` added at `ts` with `weight`.
    pub fn subtract_weighted(&mut self, value: f64, weight: f64, ts: f64) {
        let f = self.factor(ts);
        self.histogram.subtract(value, weight * f);
    }

    /// See [`Histogram::percentile`]; `p` a fraction.
    pub fn percentile(&self, p: f64) -> f64 {
        self.histogram.percentile(p)
    }

    /// See [`Histogram::fit`].
    pub fn fit(&self, request: f64, limit: f64) -> (f64, f64) {
        self.histogram.fit(request, limit)
    }

    /// No bucket at or above epsilon.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }
}

/// The VPA's own unit tests, ported value for value (file named above
/// each group, all in kubernetes/autoscaler
/// `vertical-pod-autoscaler/pkg/recommender/util/`).
#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3600.0;
    /// `startTime` of decaying_histogram_test.go.
    const START: f64 = 1_234_567_890.0;

    fn close(want: f64, got: f64) {
        assert!(
            (want - got).abs() <= 1e-9 * want.abs().max(1.0),
            "want {want}, got {got}"
        );
    }

    /// `testHistogramOptions` of histogram_test.go.
    fn linear() -> Buckets {
        Buckets::linear(10.0, 1.0, 1e-15)
    }

    // histogram_options_test.go: TestExponentialHistogramOptions.
    #[test]
    fn vpa_exponential_options() {
        let o = Buckets::exponential(500.0, 40.0, 1.5, 0.001);
        assert_eq!(o.count(), 6);
        for (i, want) in [0.0, 40.0, 100.0, 190.0, 325.0, 527.5].iter().enumerate() {
            close(*want, o.start(i));
        }
        assert_eq!(o.find(-1.0), 0);
        assert_eq!(o.find(39.99), 0);
        assert_eq!(o.find(40.0), 1, "a value at the first bucket's size");
        assert_eq!(o.find(100.0), 2);
        assert_eq!(o.find(900.0), 5);
    }

    // histogram_options_test.go: TestLinearHistogramOptions.
    #[test]
    fn vpa_linear_options() {
        let o = Buckets::linear(5.0, 0.3, 0.001);
        assert_eq!(o.count(), 18);
        close(5.1, o.start(17));
        assert_eq!(o.find(-1.0), 0);
        assert_eq!(o.find(0.0), 0);
        assert_eq!(o.find(1.3), 4);
        assert_eq!(o.find(100.0), 17);
    }

    // histogram_test.go: TestPercentilesEmptyHistogram, TestPercentiles.
    #[test]
    fn vpa_percentiles() {
        let mut h = Histogram::new(linear());
        for p in [-0.5, 0.0, 0.5, 1.0, 1.5] {
            assert_eq!(h.percentile(p), 0.0);
        }
        for i in 1..=4 {
            h.add(i as f64, i as f64);
        }
        let want = [2.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 5.0, 5.0, 5.0, 5.0];
        for (i, w) in want.iter().enumerate() {
            close(*w, h.percentile(i as f64 / 10.0));
        }
    }

    // histogram_test.go: TestPercentileOutOfBounds.
    #[test]
    fn vpa_percentile_out_of_bounds() {
        let mut h = Histogram::new(Buckets::linear(1.0, 0.1, 1e-15));
        h.add(0.1, 0.1);
        h.add(0.2, 0.2);
        close(0.2, h.percentile(-0.1));
        close(0.3, h.percentile(1.1));
        h.add(0.0, 0.1);
        h.add(1.0, 0.2);
        close(0.1, h.percentile(-0.1));
        close(1.0, h.percentile(1.1));
    }

    // histogram_test.go: TestEmptyHistogram.
    #[test]
    fn vpa_empty_histogram() {
        let eps = 1e-15;
        let mut h = Histogram::new(Buckets::linear(1.0, 0.1, eps));
        assert!(h.is_empty());
        h.add(0.1, eps * 2.5);
        assert!(!h.is_empty());
        h.subtract(0.1, eps);
        assert!(!h.is_empty());
        h.subtract(0.1, eps);
        assert!(h.is_empty());
    }

    // decaying_histogram_test.go: TestPercentilesEmptyDecayingHistogram,
    // TestSimpleDecay, TestLongtermDecay.
    #[test]
    fn vpa_simple_and_longterm_decay() {
        let h = DecayingHistogram::with_buckets(linear(), HOUR);
        for p in [-0.5, 0.0, 0.5, 1.0, 1.5] {
            assert_eq!(h.percentile(p), 0.0);
        }
        let mut h = DecayingHistogram::with_buckets(linear(), HOUR);
        h.add_weighted(2.0, 1000.0, START);
        h.add_weighted(1.0, 1.0, START + 20.0 * HOUR);
        close(2.0, h.percentile(0.999));
        close(3.0, h.percentile(1.0));
        let mut h = DecayingHistogram::with_buckets(linear(), HOUR);
        h.add_weighted(2.0, 1.0, START);
        h.add_weighted(1.0, 1.0, START + 101.0 * HOUR);
        close(2.0, h.percentile(1.0));
    }

    // decaying_histogram_test.go: TestDecayingHistogramPercentiles,
    // TestNoDecay.
    #[test]
    fn vpa_decaying_percentiles() {
        let mut h = DecayingHistogram::with_buckets(linear(), HOUR);
        for i in 1..=4 {
            h.add_weighted(i as f64, i as f64, START + (i - 1) as f64 * HOUR);
        }
        for (p, want) in [
            (0.0, 2.0),
            (0.02, 2.0),
            (0.03, 3.0),
            (0.10, 3.0),
            (0.11, 4.0),
            (0.34, 4.0),
            (0.35, 5.0),
            (1.0, 5.0),
        ] {
            close(want, h.percentile(p));
        }
        let mut h = DecayingHistogram::with_buckets(linear(), HOUR);
        for i in 1..=4 {
            h.add_weighted(i as f64, i as f64, START);
        }
        for (p, want) in [
            (0.0, 2.0),
            (0.2, 3.0),
            (0.1, 2.0),
            (0.3, 3.0),
            (0.4, 4.0),
            (0.5, 4.0),
            (0.6, 4.0),
            (0.7, 5.0),
            (0.8, 5.0),
            (0.9, 5.0),
            (1.0, 5.0),
        ] {
            close(want, h.percentile(p));
        }
    }

    #[test]
    fn recent_samples_outweigh_old_ones() {
        let mut h = DecayingHistogram::new(Kind::Cpu, HOUR);
        for _ in 0..100 {
            h.add(4.0, 0.0);
            h.add(1.0, 10.0 * HOUR);
        }
        assert!(h.percentile(0.9) < 1.1);
    }
}
