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

    /// Smallest histogram bucket (as the VPA: 0.01 cores, 10 MB).
    pub fn first_bucket(self) -> f64 {
        match self {
            Self::Cpu => 0.01,
            Self::Memory => 1e7,
            Self::Io => 1024.0,
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
        let none = Overrides::default();
        assert_eq!(
            Params::resolve(&none, Strategy::Percentile).unwrap().margin,
            0.15
        );
        assert_eq!(Params::resolve(&none, Strategy::Plan).unwrap().margin, 0.0);
    }
}
