//! Which partitions this collector owns, kept by the consumer's rebalance
//! callbacks, so that records and offsets of a partition it lost are never
//! taken or stored under a later owner's feet.
//!
//! Every assignment of a partition gets a new *epoch*. A batch remembers
//! the epoch of each partition it read; the writer stores a partition's
//! offset only while the partition is still owned in that epoch. A batch
//! that spans a revocation is still written (rows are idempotent), but its
//! offsets for the lost partitions are dropped: the new owner resumes from
//! the group's committed offset, and the rows it replays are no-ops.

use std::{collections::BTreeMap, sync::Mutex};

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
    statistics::Statistics,
};

use super::lag::LagContext;

/// The partitions owned and the epoch each was assigned in.
#[derive(Debug, Default)]
pub struct Ownership {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped at every assignment.
    next_epoch: u64,
    /// Partition → epoch of its current assignment.
    owned: BTreeMap<i32, u64>,
}

impl Ownership {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `partitions` as owned from now on, in a new epoch.
    pub fn assign(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut state = self.state();
        state.next_epoch += 1;
        let epoch = state.next_epoch;
        for p in partitions {
            state.owned.insert(p, epoch);
        }
    }

    /// Records `partitions` as no longer owned.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut state = self.state();
        for p in partitions {
            state.owned.remove(&p);
        }
    }

    /// The epoch `partition` is owned in, `None` when it is not owned.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.state().owned.get(&partition).copied()
    }

    /// Runs `f` (storing an offset) only while `partition` is owned in
    /// `epoch`, holding the ownership so that a revocation waits for it:
    /// an offset is stored before the partition is given up (and then
    /// committed with the revocation) or not at all. `None` when not owned.
    pub fn while_owned<R>(&self, partition: i32, epoch: u64, f: impl FnOnce() -> R) -> Option<R> {
        let state = self.state();
        (state.owned.get(&partition) == Some(&epoch)).then(f)
    }

    /// The partitions owned, ascending.
    pub fn owned(&self) -> Vec<i32> {
        self.state().owned.keys().copied().collect()
    }
}

/// The ingest consumer's context: reports lag (see [`LagContext`]) and
/// follows rebalances, publishing per partition whether this instance
/// owns it (`headroom_collector_partition_assigned`, 1 or 0) and how
/// many partitions it owns (`headroom_collector_assigned_partitions`).
#[derive(Debug)]
pub struct IngestContext {
    topic: String,
    /// Lag of the owned partitions.
    pub lag: LagContext,
    /// What this collector owns now.
    pub ownership: Ownership,
}

impl IngestContext {
    /// A context for consuming `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        let topic = topic.into();
        Self {
            lag: LagContext::new(&topic),
            topic,
            ownership: Ownership::default(),
        }
    }

    /// Records an assignment (by the group, or given with `--partitions`).
    pub fn assigned(&self, partitions: &[i32]) {
        self.ownership.assign(partitions.iter().copied());
        for p in partitions {
            metrics::gauge!("headroom_collector_partition_assigned", "partition" => p.to_string())
                .set(1.0);
        }
        self.publish_owned();
        tracing::info!(
            topic = %self.topic,
            partitions = ?partitions,
            owned = ?self.ownership.owned(),
            "partitions assigned; reading from the group's committed offsets"
        );
    }

    /// Records a revocation: the partitions' records are no longer taken
    /// and their offsets no longer stored here.
    pub fn revoked(&self, partitions: &[i32]) {
        self.ownership.revoke(partitions.iter().copied());
        for p in partitions {
            let partition = p.to_string();
            metrics::gauge!("headroom_collector_partition_assigned", "partition" => partition.clone())
                .set(0.0);
            // The new owner reports this partition's lag from now on.
            metrics::gauge!("headroom_collector_consumer_lag_partition", "partition" => partition)
                .set(0.0);
        }
        self.publish_owned();
        tracing::info!(
            topic = %self.topic,
            partitions = ?partitions,
            "partitions revoked; their in-flight records are written but their offsets not stored"
        );
    }

    fn publish_owned(&self) {
        metrics::gauge!("headroom_collector_assigned_partitions")
            .set(self.ownership.owned().len() as f64);
    }

    fn partitions_of(&self, tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic) {
            let known = t.partitions.keys().filter(|p| **p >= 0).count();
            if known > 0 {
                metrics::gauge!("headroom_collector_topic_partitions").set(known as f64);
            }
        }
        self.lag.stats(statistics);
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                metrics::counter!("headroom_collector_rebalances_total", "kind" => "revoke")
                    .increment(1);
                self.revoked(&self.partitions_of(tpl));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                metrics::counter!("headroom_collector_rebalances_total", "kind" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "rebalance failed; the group retries");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!("headroom_collector_rebalances_total", "kind" => "assign")
                .increment(1);
            self.assigned(&self.partitions_of(tpl));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reassigned_partition_gets_a_new_epoch() {
        let o = Ownership::default();
        o.assign([0, 1, 2]);
        let first = o.epoch(1).unwrap();
        assert_eq!(o.owned(), vec![0, 1, 2]);
        o.revoke([0, 1, 2]);
        assert_eq!(o.epoch(1), None);
        o.assign([1]);
        assert_ne!(o.epoch(1), Some(first), "an epoch is never reused");
        assert_eq!(o.owned(), vec![1]);
    }

    #[test]
    fn offsets_are_stored_only_in_the_epoch_they_were_read_in() {
        let o = Ownership::default();
        o.assign([3]);
        let e = o.epoch(3).unwrap();
        assert_eq!(o.while_owned(3, e, || "stored"), Some("stored"));
        o.revoke([3]);
        assert_eq!(o.while_owned(3, e, || "stored"), None);
        o.assign([3]);
        assert_eq!(o.while_owned(3, e, || "stored"), None, "a later epoch");
    }

    #[test]
    fn revoking_one_partition_leaves_the_others_in_their_epoch() {
        let o = Ownership::default();
        o.assign([0, 1]);
        let e = o.epoch(0);
        o.revoke([1]);
        assert_eq!(o.epoch(0), e);
        assert_eq!(o.epoch(1), None);
    }
}
