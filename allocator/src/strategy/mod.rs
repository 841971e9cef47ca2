//! The allocation strategies, as pure functions over history or predicted
//! quantile curves. Each returns a request and a limit in the resource's
//! unit, the slack and violation risk it expects, and what it used.
//!
//! - [`max`]: the prototype's rule, the historical maximum rounded up.
//! - [`vpa`]: the Kubernetes VPA's recommender, faithfully — a decaying
//!   histogram, CPU at its 90th percentile, memory at the 90th percentile
//!   of per-replica 24 h peaks, plus a 15 % margin, at least 25 millicores
//!   and 250 MiB, with bounds widened by its confidence.
//! - [`percentile`]: the same with Headroom's departures as named
//!   parameters (a median floor, per-task memory peaks, no minimum).
//! - [`predictive`]: the predictor's quantile curves for this task's mix,
//!   read at `1 − target_violation_rate` and held over the whole horizon.
//! - [`plan`]: the same curve cut into at most `max_resizes + 1`
//!   piecewise-constant segments of at least `min_segment_seconds`, chosen
//!   to minimise the allocated area (an exact dynamic programme).

pub mod auto;
mod history;
mod predicted;

use std::{fmt, str::FromStr};

pub use history::{Estimate, Summary, auto, estimate, max, percentile, vpa};
pub use predicted::{plan, predictive};

use crate::error::Error;

/// The strategies [`Strategy::from_str`] knows.
pub const STRATEGIES: [&str; 7] = [
    "max",
    "percentile",
    "vpa",
    "predictive",
    "plan",
    "auto",
    "provisioned",
];

/// The strategy a request that names none gets.
pub const DEFAULT_STRATEGY: Strategy = Strategy::Percentile;

/// A strategy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// Historical maximum, rounded up.
    Max,
    /// VPA-style decaying-histogram percentile, with Headroom's named
    /// departures ([`crate::params::HEADROOM_DEPARTURES`]).
    Percentile,
    /// The Kubernetes VPA's recommender, faithfully.
    Vpa,
    /// The model's upper quantile over the horizon.
    Predictive,
    /// Time-varying segments of the model's upper quantile.
    Plan,
    /// Per series, the candidate with the lowest cost on its recent
    /// history (as Google's Autopilot).
    Auto,
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
    type Err = Error;

    /// A strategy by its wire name; [`Error::UnknownStrategy`] lists the
    /// known ones.
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s.trim() {
            "max" => Self::Max,
            "percentile" => Self::Percentile,
            "vpa" => Self::Vpa,
            "auto" => Self::Auto,
            "predictive" => Self::Predictive,
            "plan" => Self::Plan,
            "provisioned" => Self::Provisioned,
            _ => {
                return Err(Error::UnknownStrategy {
                    name: s.to_string(),
                });
            }
        })
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
    /// History samples used; for the model-based strategies, the replayed
    /// samples that calibrated it (its own, or its resource's pool).
    pub samples_used: u64,
    /// One sentence on how it was reached.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_names_round_trip_and_unknown_ones_list_the_known() {
        for name in STRATEGIES {
            assert_eq!(name.parse::<Strategy>().unwrap().name(), name);
        }
        let e = "magic".parse::<Strategy>().unwrap_err().to_string();
        assert!(
            e.contains("\"magic\" does not exist") && e.contains("plan"),
            "{e}"
        );
    }
}
