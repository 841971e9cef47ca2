//! Rates from monotonically increasing counters (CPU time, bytes read):
//! deltas over the interval actually elapsed, with counter resets and
//! processes that come and go handled instead of turned into spikes.

use std::collections::HashMap;
use std::hash::Hash;

/// The previous reading of each counter, keyed by whatever identifies one
/// source (a process: pid and start time; a cgroup: its path).
#[derive(Debug)]
pub struct CounterSet<K> {
    previous: HashMap<K, u64>,
}

impl<K> Default for CounterSet<K> {
    fn default() -> Self {
        Self {
            previous: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> CounterSet<K> {
    /// Sums the increase of every counter since the previous call. A source
    /// seen for the first time contributes nothing (its history before the
    /// previous tick is unknown) unless `new_since_last` says it started
    /// after the previous tick, in which case all of its counter counts. A
    /// counter that went backwards (reset) counts from zero. Sources not in
    /// `readings` are forgotten.
    pub fn delta<I>(&mut self, readings: I, mut new_since_last: impl FnMut(&K) -> bool) -> u64
    where
        I: IntoIterator<Item = (K, u64)>,
    {
        let mut next = HashMap::with_capacity(self.previous.len());
        let mut total: u64 = 0;
        for (key, value) in readings {
            let inc = match self.previous.get(&key) {
                Some(prev) if value >= *prev => value - prev,
                Some(_) => value,
                None if new_since_last(&key) => value,
                None => 0,
            };
            total = total.saturating_add(inc);
            next.insert(key, value);
        }
        self.previous = next;
        total
    }

    /// Whether any counter has been seen yet (the first tick has no rate).
    pub fn is_primed(&self) -> bool {
        !self.previous.is_empty()
    }
}

/// A rate per second from an increase over `elapsed_secs`; `None` for a
/// non-positive interval.
pub fn per_second(increase: u64, elapsed_secs: f64) -> Option<f64> {
    (elapsed_secs > 0.0).then(|| increase as f64 / elapsed_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn deltas_sum_increases_and_survive_resets_and_churn() {
        let mut set = CounterSet::default();
        assert_eq!(
            set.delta([(1, 100), (2, 50)], |_| false),
            0,
            "first sight has no history"
        );
        assert_eq!(set.delta([(1, 130), (2, 70)], |_| false), 50);
        // 2 exits, 3 is new and started after the last tick, 1 was reset.
        assert_eq!(set.delta([(1, 5), (3, 40)], |k| *k == 3), 45);
        assert_eq!(set.delta([(1, 6), (3, 41)], |_| false), 2);
    }

    #[test]
    fn rates_need_a_positive_interval() {
        assert_eq!(per_second(500, 0.5), Some(1000.0));
        assert_eq!(per_second(500, 0.0), None);
    }

    proptest! {
        #[test]
        fn a_steady_counter_gives_its_increase(start in 0u64..1 << 40, steps in proptest::collection::vec(0u64..1 << 20, 1..20)) {
            let mut set = CounterSet::default();
            let mut v = start;
            set.delta([("k", v)], |_| false);
            for s in steps {
                v += s;
                prop_assert_eq!(set.delta([("k", v)], |_| false), s);
            }
        }
    }
}
