//! What the allocations it gave taught the allocator: OOM kills raise
//! memory, CPU throttled at its limit is a lower bound on demand, and
//! replicas that differ a lot are named. Pure functions over summaries.

use crate::{
    params::Kind,
    render::amount,
    strategy::{Alloc, Summary},
};

/// Memory added after an OOM kill, at least: 100 MiB (the VPA's
/// `OOMMinBumpUp`, kubernetes/autoscaler
/// `pkg/recommender/model/container.go`).
pub const OOM_MIN_BUMP_BYTES: f64 = 100.0 * 1024.0 * 1024.0;
/// …or this factor of the memory at the kill, whichever is more (the VPA's
/// `OOMBumpUpRatio`).
pub const OOM_BUMP_RATIO: f64 = 1.2;
/// A CPU series throttled in more than this share of its samples is
/// censored at its limit: its usage says "at least the limit".
pub const THROTTLED_SHARE: f64 = 0.01;
/// How far above the limit it hit a censored CPU series is requested.
pub const THROTTLED_HEADROOM: f64 = 0.25;
/// Replicas differ enough to be named when the hottest peaks at this many
/// times the median of the other replicas (the VPA's problem with DaemonSets whose pods
/// differ by node, kubernetes/autoscaler#6420).
pub const SKEW_RATIO: f64 = 2.0;

/// Raises a memory allocation after OOM kills in the window: at least
/// `max(peak + 100 MiB, 1.2 × peak)` where `peak` is the most memory the
/// service reached (its working set, or the limit in force when that was
/// higher: a kill happens at the limit). Computed from what was observed,
/// never from a previous recommendation, so repeated kills at one level do
/// not compound (kubernetes/autoscaler#1182). `kills`: the `oom_kills`
/// series, `limit`: `memory_limit`.
pub fn after_oom_kills(
    alloc: &mut Alloc,
    memory: &Summary,
    kills: Option<&Summary>,
    limit: Option<&Summary>,
) {
    let Some(kills) = kills.filter(|k| k.max() > 0.0) else {
        return;
    };
    let peak = memory.max().max(limit.map_or(0.0, Summary::max));
    let floor = (peak + OOM_MIN_BUMP_BYTES).max(peak * OOM_BUMP_RATIO);
    raise_to(alloc, floor, || {
        format!(
            "OOM killed in {} sample(s) of the window: raised to max(peak + 100 MiB, 1.2 × peak) = {} from a peak of {} (the VPA's rule; computed from the peak, so repeated kills do not compound)",
            kills.positive(),
            amount(Kind::Memory, floor),
            amount(Kind::Memory, peak)
        )
    });
}

/// Raises request (and limit, to stay at least the request) to `floor`
/// when below it, saying why in the explanation.
fn raise_to(alloc: &mut Alloc, floor: f64, why: impl FnOnce() -> String) {
    if alloc.request >= floor {
        return;
    }
    alloc.request = floor;
    alloc.limit = alloc.limit.max(floor);
    alloc.detail.push_str("; ");
    alloc.detail.push_str(&why());
}

/// Raises a CPU allocation whose series was throttled in more than 1 % of
/// its samples: usage under a quota is a lower bound on demand, so the
/// request goes 25 % above the limit it hit. `throttled`: the
/// `cpu_throttled` series, `limit`: `cpu_limit`.
pub fn after_throttling(alloc: &mut Alloc, throttled: Option<&Summary>, limit: Option<&Summary>) {
    let (Some(throttled), Some(limit)) = (throttled, limit) else {
        return;
    };
    let share = throttled.positive_share();
    let hit = limit.max();
    if share <= THROTTLED_SHARE || hit <= 0.0 {
        return;
    }
    let floor = hit * (1.0 + THROTTLED_HEADROOM);
    raise_to(alloc, floor, || {
        format!(
            "throttled in {:.1} % of samples at its {} limit, so its usage is censored there: requested {:.0} % above the limit ({}) since demand above a quota is never observed",
            share * 100.0,
            amount(Kind::Cpu, hit),
            THROTTLED_HEADROOM * 100.0,
            amount(Kind::Cpu, floor)
        )
    });
}

/// Names the hottest replica when replicas differ a lot (its peak at least
/// twice the median of the others' peaks; with two replicas, the other
/// one's), and says whether what one replica gets covers it: a percentile
/// over many replicas can leave one hot replica out (the VPA's trouble with
/// DaemonSets), and the operator must see that.
pub fn name_skew(alloc: &mut Alloc, summary: &Summary) {
    let mut peaks: Vec<(&str, f64)> = summary.instance_peaks().collect();
    if peaks.len() < 2 {
        return;
    }
    peaks.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (hottest, top) = peaks[peaks.len() - 1];
    let others = &peaks[..peaks.len() - 1];
    let median = if others.len() % 2 == 1 {
        others[others.len() / 2].1
    } else {
        (others[others.len() / 2 - 1].1 + others[others.len() / 2].1) / 2.0
    };
    if median <= 0.0 || top < SKEW_RATIO * median {
        return;
    }
    let verdict = if alloc.limit >= top {
        "what one replica gets covers it".to_string()
    } else {
        format!(
            "what one replica gets does NOT cover it: {hottest} would pass the {} limit (use `max`, a higher percentile, or give that replica its own service)",
            amount(summary.kind(), alloc.limit)
        )
    };
    alloc.detail.push_str(&format!(
        "; replicas differ: the hottest of {}, {hottest}, peaked at {}, {:.1}× the median of the others ({}); {verdict}",
        peaks.len(),
        amount(summary.kind(), top),
        top / median,
        amount(summary.kind(), median)
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Kind;

    const MIB: f64 = 1024.0 * 1024.0;

    fn summary(kind: Kind, samples: &[(&str, f64)]) -> Summary {
        let mut s = Summary::new(kind, 86_400.0);
        for (i, (instance, v)) in samples.iter().enumerate() {
            s.add_of(instance, 0, *v, i as f64 * 60.0);
        }
        s
    }

    fn alloc(request: f64) -> Alloc {
        Alloc {
            request,
            limit: request,
            expected_slack: 0.0,
            violation_risk: 0.0,
            samples_used: 1,
            detail: String::new(),
        }
    }

    #[test]
    fn an_oom_kill_raises_memory_by_the_vpa_rule_without_compounding() {
        let memory = summary(Kind::Memory, &[("a", 400.0 * MIB), ("a", 500.0 * MIB)]);
        let kills = summary(Kind::Cpu, &[("a", 0.0), ("a", 1.0)]);
        let mut a = alloc(450.0 * MIB);
        after_oom_kills(&mut a, &memory, Some(&kills), None);
        assert_eq!(a.request, 600.0 * MIB, "1.2 × 500 MiB beats + 100 MiB");
        assert!(a.detail.contains("OOM killed"), "{}", a.detail);
        assert!(
            a.detail.contains("= 600Mi from a peak of 500Mi"),
            "{}",
            a.detail
        );
        // The same kills seen again give the same answer, not 1.2 × 600.
        let mut again = alloc(a.request);
        after_oom_kills(&mut again, &memory, Some(&kills), None);
        assert_eq!(again.request, 600.0 * MIB);
        // A small service: + 100 MiB beats 1.2 ×.
        let small = summary(Kind::Memory, &[("a", 50.0 * MIB)]);
        let mut s = alloc(60.0 * MIB);
        after_oom_kills(&mut s, &small, Some(&kills), None);
        assert_eq!(s.request, 150.0 * MIB);
        // No kill: nothing changes.
        let none = summary(Kind::Cpu, &[("a", 0.0)]);
        let mut n = alloc(1.0);
        after_oom_kills(&mut n, &memory, Some(&none), None);
        assert_eq!(n.request, 1.0);
    }

    #[test]
    fn cpu_throttled_at_its_limit_is_requested_above_it() {
        let mut ticks = vec![("a", 0.0); 90];
        ticks.extend(vec![("a", 0.4); 10]);
        let throttled = summary(Kind::Cpu, &ticks);
        let limit = summary(Kind::Cpu, &[("a", 0.2)]);
        let mut a = alloc(0.19);
        after_throttling(&mut a, Some(&throttled), Some(&limit));
        assert!((a.request - 0.25).abs() < 1e-12, "{}", a.request);
        assert!(a.detail.contains("10.0 % of samples"), "{}", a.detail);
        assert!(
            a.detail.contains("at its 200m limit") && a.detail.contains("(250m)"),
            "{}",
            a.detail
        );
        // Rarely throttled (≤ 1 %): usage is demand.
        let mut rare = vec![("a", 0.0); 200];
        rare.push(("a", 0.4));
        let mut b = alloc(0.19);
        after_throttling(&mut b, Some(&summary(Kind::Cpu, &rare)), Some(&limit));
        assert_eq!(b.request, 0.19);
    }

    #[test]
    fn a_hot_replica_is_named_and_similar_ones_are_not() {
        let skewed = summary(
            Kind::Memory,
            &[
                ("web-1", 100.0 * MIB),
                ("web-2", 110.0 * MIB),
                ("web-3", 600.0 * MIB),
            ],
        );
        let mut a = alloc(700.0 * MIB);
        name_skew(&mut a, &skewed);
        assert!(
            a.detail.contains("covers it") && !a.detail.contains("NOT"),
            "{}",
            a.detail
        );
        let mut short = alloc(120.0 * MIB);
        name_skew(&mut short, &skewed);
        assert!(
            short.detail.contains("does NOT cover it"),
            "{}",
            short.detail
        );
        assert!(
            a.detail.contains("web-3") && a.detail.contains("5.7×"),
            "{}",
            a.detail
        );
        let even = summary(
            Kind::Memory,
            &[("web-1", 100.0 * MIB), ("web-2", 120.0 * MIB)],
        );
        let mut b = alloc(130.0 * MIB);
        name_skew(&mut b, &even);
        assert!(b.detail.is_empty(), "{}", b.detail);
    }
}
