//! The allocation strategies, as pure functions over history or predicted
//! quantile curves. Each returns a request and a limit in the resource's
//! unit, the slack and violation risk it expects, and what it used.
//!
//! - [`max`]: the prototype's rule, the historical maximum rounded up.
//! - [`percentile`]: the Kubernetes VPA's recommender — a decaying
//!   histogram, CPU at its 90th percentile, memory at the 90th percentile
//!   of per-task peaks, plus a 15 % margin, with lower and upper bounds.
//! - [`predictive`]: the predictor's quantile curves for this task's mix,
//!   read at `1 − target_violation_rate` and held over the whole horizon.
//! - [`plan`]: the same curve cut into at most `max_resizes + 1`
//!   piecewise-constant segments of at least `min_segment_seconds`, chosen
//!   to minimise the allocated area (an exact dynamic programme).

use std::{collections::HashMap, fmt, str::FromStr};

use headroom_proto::v1;

/// The strategies [`Strategy::from_str`] knows.
pub const STRATEGIES: [&str; 5] = ["max", "percentile", "predictive", "plan", "provisioned"];

/// A strategy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Historical maximum, rounded up.
    Max,
    /// VPA-style decaying-histogram percentile.
    Percentile,
    /// The model's upper quantile over the horizon.
    Predictive,
    /// Time-varying segments of the model's upper quantile.
    Plan,
    /// What the trace's operators allocated (backtests of imported traces).
    Provisioned,
}

impl Strategy {
    /// The wire name.
    pub fn name(self) -> &'static str {
        STRATEGIES[self as usize]
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "max" => Self::Max,
            "percentile" => Self::Percentile,
            "predictive" => Self::Predictive,
            "plan" => Self::Plan,
            "provisioned" => Self::Provisioned,
            _ => {
                return Err(format!(
                    "strategy {s:?} does not exist (known: {})",
                    STRATEGIES.join(", ")
                ));
            }
        })
    }
}

/// Which defaults a resource takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cores.
    Cpu,
    /// Bytes.
    Memory,
    /// Bytes per second (disk and network).
    Io,
}

impl Kind {
    /// The kind of a resource by its wire name.
    pub fn of(resource: &str) -> Self {
        match resource {
            "cpu" => Self::Cpu,
            "memory" => Self::Memory,
            _ => Self::Io,
        }
    }

    /// The step the `max` strategy rounds up to: 10 millicores, 10 MiB,
    /// 10 KiB/s ("the next ten" of the prototype, in each unit's grain).
    pub fn round_step(self) -> f64 {
        match self {
            Self::Cpu => 0.01,
            Self::Memory => 10.0 * 1024.0 * 1024.0,
            Self::Io => 10.0 * 1024.0,
        }
    }

    /// Smallest histogram bucket (as the VPA: 0.01 cores, 10 MB).
    fn first_bucket(self) -> f64 {
        match self {
            Self::Cpu => 0.01,
            Self::Memory => 1e7,
            Self::Io => 1024.0,
        }
    }
}

/// Strategy parameters with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// CPU target percentile, in (0, 100].
    pub cpu_percentile: f64,
    /// Memory-peak target percentile, in (0, 100].
    pub memory_percentile: f64,
    /// Margin added to the target, as a fraction.
    pub margin: f64,
    /// Half-life of the decaying histogram, in seconds.
    pub half_life_seconds: f64,
    /// Accepted share of samples above the limit, in (0, 1).
    pub target_violation_rate: f64,
    /// Most resizes in a plan.
    pub max_resizes: u32,
    /// Shortest plan segment, in seconds.
    pub min_segment_seconds: f64,
    /// Task duration to allocate for; `None`: from history.
    pub horizon_seconds: Option<f64>,
    /// Limit as a multiple of the request, at least 1.
    pub limit_ratio: f64,
}

/// The VPA's defaults; a 1 % violation target; 4 resizes of at least 5 min.
impl Default for Params {
    fn default() -> Self {
        Self {
            cpu_percentile: 90.0,
            memory_percentile: 90.0,
            margin: 0.15,
            half_life_seconds: 24.0 * 3600.0,
            target_violation_rate: 0.01,
            max_resizes: 4,
            min_segment_seconds: 300.0,
            horizon_seconds: None,
            limit_ratio: 1.0,
        }
    }
}

impl Params {
    /// Fills the defaults in and checks ranges; an error names the field.
    /// `margin` defaults to 0.15 for `percentile` and 0 for the model-based
    /// strategies, whose quantile already is the safety.
    pub fn resolve(p: Option<&v1::StrategyParams>, strategy: Strategy) -> Result<Self, String> {
        let d = Self::default();
        let Some(p) = p else {
            return Ok(Self {
                margin: default_margin(strategy),
                ..d
            });
        };
        let params = Self {
            cpu_percentile: p.cpu_percentile.unwrap_or(d.cpu_percentile),
            memory_percentile: p.memory_percentile.unwrap_or(d.memory_percentile),
            margin: p.margin.unwrap_or(default_margin(strategy)),
            half_life_seconds: p.half_life_seconds.unwrap_or(d.half_life_seconds),
            target_violation_rate: p.target_violation_rate.unwrap_or(d.target_violation_rate),
            max_resizes: p.max_resizes.unwrap_or(d.max_resizes),
            min_segment_seconds: p.min_segment_seconds.unwrap_or(d.min_segment_seconds),
            horizon_seconds: p.horizon_seconds,
            limit_ratio: p.limit_ratio.unwrap_or(d.limit_ratio),
        };
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<(), String> {
        let within = |name: &str, v: f64, ok: bool, range: &str| {
            if ok && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be {range}, got {v}"))
            }
        };
        within(
            "cpu_percentile",
            self.cpu_percentile,
            self.cpu_percentile > 0.0 && self.cpu_percentile <= 100.0,
            "in (0, 100]",
        )?;
        within(
            "memory_percentile",
            self.memory_percentile,
            self.memory_percentile > 0.0 && self.memory_percentile <= 100.0,
            "in (0, 100]",
        )?;
        within("margin", self.margin, self.margin >= 0.0, "at least 0")?;
        within(
            "half_life_seconds",
            self.half_life_seconds,
            self.half_life_seconds > 0.0,
            "greater than 0",
        )?;
        within(
            "target_violation_rate",
            self.target_violation_rate,
            self.target_violation_rate > 0.0 && self.target_violation_rate < 1.0,
            "in (0, 1)",
        )?;
        within(
            "min_segment_seconds",
            self.min_segment_seconds,
            self.min_segment_seconds > 0.0,
            "greater than 0",
        )?;
        within(
            "limit_ratio",
            self.limit_ratio,
            self.limit_ratio >= 1.0,
            "at least 1",
        )?;
        if let Some(h) = self.horizon_seconds {
            within("horizon_seconds", h, h > 0.0, "greater than 0")?;
        }
        Ok(())
    }
}

fn default_margin(strategy: Strategy) -> f64 {
    match strategy {
        Strategy::Percentile => Params::default().margin,
        _ => 0.0,
    }
}

/// An answer for one service and resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Alloc {
    /// Guaranteed amount.
    pub request: f64,
    /// Cap, at least the request.
    pub limit: f64,
    /// Expected (allocated − used) / allocated, in [0, 1].
    pub expected_slack: f64,
    /// Expected share of samples above the limit, in [0, 1].
    pub violation_risk: f64,
    /// History samples used.
    pub samples_used: u64,
    /// One sentence on how it was reached.
    pub detail: String,
}

/// One observed sample of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    /// Unix time, seconds.
    pub ts: f64,
    /// Index of its task in the history's task list.
    pub task: usize,
    /// Value in the resource's unit.
    pub value: f64,
}

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

/// What the history-based strategies need of one series, built sample by
/// sample: decaying and plain histograms, per-task peaks, the maximum.
#[derive(Debug, Clone)]
pub struct Summary {
    kind: Kind,
    half_life: f64,
    decayed: Option<DecayingHistogram>,
    plain: DecayingHistogram,
    peaks: HashMap<u64, (f64, f64)>,
    max: f64,
    count: u64,
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
            max: 0.0,
            count: 0,
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

    /// Adds a sample of task `task` taken at `ts`.
    pub fn add(&mut self, task: u64, value: f64, ts: f64) {
        let half_life = self.half_life;
        let kind = self.kind;
        self.decayed
            .get_or_insert_with(|| DecayingHistogram::new(kind, half_life, ts))
            .add(value, ts);
        self.plain.add(value, 0.0);
        let peak = self.peaks.entry(task).or_insert((value, ts));
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
            // Peaks per task, each at the time it happened.
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
/// at the curve's maximum over each, each at least `min_segment` long
/// (unless the whole horizon is shorter), minimising the allocated area.
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
    let long_enough = |a: usize, b: usize| whole < min_segment || span(a, b) >= min_segment - 1e-9;
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
            "{} segments (at most {} resizes, each at least {:.0} s) cut along the predicted p{:.4}, each at the lowest level with an expected {:.2} % of samples above it",
            segs.len(),
            params.max_resizes,
            params.min_segment_seconds,
            level * 100.0,
            params.target_violation_rate * 100.0
        ),
    };
    (segs, alloc)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, proptest};

    use super::*;

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
    fn strategy_names_round_trip_and_unknown_ones_list_the_known() {
        for name in STRATEGIES {
            assert_eq!(name.parse::<Strategy>().unwrap().name(), name);
        }
        let e = "magic".parse::<Strategy>().unwrap_err();
        assert!(
            e.contains("\"magic\" does not exist") && e.contains("plan"),
            "{e}"
        );
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

    #[test]
    fn params_are_checked_by_name() {
        let bad = v1::StrategyParams {
            target_violation_rate: Some(1.5),
            ..Default::default()
        };
        let e = Params::resolve(Some(&bad), Strategy::Plan).unwrap_err();
        assert!(e.contains("target_violation_rate"), "{e}");
        let p = Params::resolve(None, Strategy::Percentile).unwrap();
        assert_eq!(p.margin, 0.15);
        assert_eq!(Params::resolve(None, Strategy::Plan).unwrap().margin, 0.0);
    }

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
                prop_assert!(horizon < min_segment || len >= min_segment - 1e-9, "segment of {} s", len);
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
