//! Strategy parameters: what a caller may override, the defaults (the
//! VPA's) and the ranges every value is checked against.

use crate::{
    error::{Error, Result},
    strategy::Strategy,
};

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
            headroom_proto::resource::CPU => Self::Cpu,
            headroom_proto::resource::MEMORY => Self::Memory,
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

    /// The VPA's minimum recommendation (`pod-recommendation-min-cpu-
    /// millicores` 25, `pod-recommendation-min-memory-mb` 250, in
    /// `pkg/recommender/logic/recommender.go`); IO has none.
    pub fn vpa_minimum(self) -> f64 {
        match self {
            Self::Cpu => 0.025,
            Self::Memory => 250.0 * 1024.0 * 1024.0,
            Self::Io => 0.0,
        }
    }
}

/// Which memory peaks `percentile` takes its percentile of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peaks {
    /// One peak per task and replica (Headroom's departure: a task is the
    /// unit a mix of services runs in).
    PerTask,
    /// One peak per replica and 24 h window, stamped at the window's end
    /// (the VPA's `MemoryAggregationInterval`).
    PerWindow,
}

impl Peaks {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerTask => "task",
            Self::PerWindow => "window",
        }
    }

    /// By wire name (`task`, `window`); an error names the value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "task" => Ok(Self::PerTask),
            "window" => Ok(Self::PerWindow),
            _ => Err(Error::BadChoice {
                field: "memory_peaks",
                value: s.to_string(),
                choices: "task, window",
            }),
        }
    }
}

/// Parameters a caller gives; `None` takes the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// See [`Params::cpu_percentile`].
    pub cpu_percentile: Option<f64>,
    /// See [`Params::memory_percentile`].
    pub memory_percentile: Option<f64>,
    /// See [`Params::margin`].
    pub margin: Option<f64>,
    /// See [`Params::half_life_seconds`].
    pub half_life_seconds: Option<f64>,
    /// See [`Params::target_violation_rate`].
    pub target_violation_rate: Option<f64>,
    /// See [`Params::max_resizes`].
    pub max_resizes: Option<u32>,
    /// See [`Params::min_segment_seconds`].
    pub min_segment_seconds: Option<f64>,
    /// See [`Params::horizon_seconds`].
    pub horizon_seconds: Option<f64>,
    /// See [`Params::limit_ratio`].
    pub limit_ratio: Option<f64>,
    /// See [`Params::median_floor`].
    pub median_floor: Option<bool>,
    /// See [`Params::memory_peaks`].
    pub memory_peaks: Option<Peaks>,
    /// See [`Params::minimum`].
    pub minimum: Option<bool>,
    /// See [`Params::overrun_weight`].
    pub overrun_weight: Option<f64>,
    /// See [`Params::oom_weight`].
    pub oom_weight: Option<f64>,
    /// See [`Params::change_weight`].
    pub change_weight: Option<f64>,
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
    /// Limit as a multiple of the request, in [1, 100].
    pub limit_ratio: f64,
    /// `percentile` never recommends below the observed median
    /// (Headroom's departure from the VPA, which has no such floor).
    pub median_floor: bool,
    /// Which memory peaks `percentile` reads.
    pub memory_peaks: Peaks,
    /// `percentile` never recommends below the VPA's minimum (25
    /// millicores, 250 MiB).
    pub minimum: bool,
    /// `auto`'s weight of a CPU or IO overrun; `None`: 10.
    pub overrun_weight: Option<f64>,
    /// `auto`'s weight of a memory overrun (an OOM kill); `None`: 1,000.
    pub oom_weight: Option<f64>,
    /// `auto`'s weight of a resize; `None`: 0.01.
    pub change_weight: Option<f64>,
}

/// `percentile`'s defaults for (median floor, memory peaks, minimum),
/// chosen by the real-trace backtest in the README (Allocator section).
pub const HEADROOM_DEPARTURES: (bool, Peaks, bool) = (true, Peaks::PerTask, false);

/// The VPA's recommender: no median floor, 24 h window peaks, minimums.
pub const VPA_CHOICES: (bool, Peaks, bool) = (false, Peaks::PerWindow, true);

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
            median_floor: HEADROOM_DEPARTURES.0,
            memory_peaks: HEADROOM_DEPARTURES.1,
            minimum: HEADROOM_DEPARTURES.2,
            overrun_weight: None,
            oom_weight: None,
            change_weight: None,
        }
    }
}

impl Params {
    /// Fills the defaults in and checks ranges; an error
    /// ([`Error::Param`]) names the field and the value. `margin` defaults
    /// to 0.15 for `percentile` and 0 for the model-based strategies, whose
    /// quantile already is the safety.
    pub fn resolve(p: &Overrides, strategy: Strategy) -> Result<Self> {
        let d = Self::default();
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
            median_floor: p.median_floor.unwrap_or(d.median_floor),
            memory_peaks: p.memory_peaks.unwrap_or(d.memory_peaks),
            minimum: p.minimum.unwrap_or(d.minimum),
            overrun_weight: p.overrun_weight,
            oom_weight: p.oom_weight,
            change_weight: p.change_weight,
        };
        let params = if strategy == Strategy::Vpa {
            // The VPA's recommender has none of Headroom's departures.
            let (median_floor, memory_peaks, minimum) = VPA_CHOICES;
            Self {
                median_floor,
                memory_peaks,
                minimum,
                ..params
            }
        } else {
            params
        };
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<()> {
        let within = |field: &'static str, value: f64, ok: bool, range: &'static str| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(Error::Param {
                    field,
                    value,
                    range,
                })
            }
        };
        let percent = |p: f64| p > 0.0 && p <= 100.0;
        within(
            "cpu_percentile",
            self.cpu_percentile,
            percent(self.cpu_percentile),
            "in (0, 100]",
        )?;
        within(
            "memory_percentile",
            self.memory_percentile,
            percent(self.memory_percentile),
            "in (0, 100]",
        )?;
        within(
            "margin",
            self.margin,
            (0.0..=10.0).contains(&self.margin),
            "in [0, 10]",
        )?;
        within(
            "half_life_seconds",
            self.half_life_seconds,
            (60.0..=366.0 * 86_400.0).contains(&self.half_life_seconds),
            "between 60 s and a year",
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
        // A limit a hundred times the request is no limit; beyond it the
        // products overflow what Kubernetes quantities hold (the helper
        // trial's 1e308 gave an infinite limit, written as 0 in k8s).
        within(
            "limit_ratio",
            self.limit_ratio,
            (1.0..=100.0).contains(&self.limit_ratio),
            "in [1, 100]",
        )?;
        for (field, w) in [
            ("overrun_weight", self.overrun_weight),
            ("oom_weight", self.oom_weight),
            ("change_weight", self.change_weight),
        ] {
            if let Some(w) = w {
                within(field, w, w >= 0.0, "at least 0")?;
            }
        }
        if let Some(h) = self.horizon_seconds {
            within(
                "horizon_seconds",
                h,
                h > 0.0 && h <= 366.0 * 86_400.0,
                "greater than 0 and at most a year",
            )?;
        }
        Ok(())
    }
}

fn default_margin(strategy: Strategy) -> f64 {
    match strategy {
        Strategy::Percentile | Strategy::Vpa => Params::default().margin,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked_by_name_and_value() {
        let bad = Overrides {
            target_violation_rate: Some(1.5),
            ..Default::default()
        };
        let e = Params::resolve(&bad, Strategy::Plan)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "target_violation_rate must be in (0, 1), got 1.5");
        let huge = Overrides {
            limit_ratio: Some(1e308),
            ..Default::default()
        };
        let e = Params::resolve(&huge, Strategy::Percentile)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "limit_ratio must be in [1, 100], got 1e308");
        let none = Overrides::default();
        assert_eq!(
            Params::resolve(&none, Strategy::Percentile).unwrap().margin,
            0.15
        );
        assert_eq!(Params::resolve(&none, Strategy::Plan).unwrap().margin, 0.0);
    }
}
