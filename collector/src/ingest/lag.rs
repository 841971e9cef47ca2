//! Consumer lag: how many records of the usage topic the collector has not
//! yet stored, per assigned partition. librdkafka reports its statistics
//! every few seconds; [`LagContext`] turns them into the
//! `headroom_collector_consumer_lag` gauges.
//!
//! The high watermark comes from the fetch responses in those statistics,
//! not from a ListOffsets query (tansu answers that with the start of the
//! last batch).

use std::{sync::Mutex, time::Duration};

use rdkafka::{
    ClientContext,
    consumer::ConsumerContext,
    statistics::{Partition, Statistics},
};

/// How often librdkafka reports statistics, and so the lag.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Records behind the end of a partition: from the offset the collector has
/// stored (committed to PostgreSQL), else the group's committed offset,
/// else the first retained record, to the high watermark. `None` while the
/// high watermark is unknown.
pub fn partition_lag(p: &Partition) -> Option<i64> {
    if p.hi_offset < 0 {
        return None;
    }
    let at = [p.stored_offset, p.committed_offset, p.lo_offset]
        .into_iter()
        .find(|o| *o >= 0)?;
    Some((p.hi_offset - at.max(p.lo_offset)).max(0))
}

/// The lag of every known partition of `topic`, sorted by partition.
pub fn topic_lag(stats: &Statistics, topic: &str) -> Vec<(i32, i64)> {
    let Some(t) = stats.topics.get(topic) else {
        return Vec::new();
    };
    let mut lags: Vec<(i32, i64)> = t
        .partitions
        .values()
        // Partition -1 is librdkafka's internal "unassigned" queue.
        .filter(|p| p.partition >= 0 && p.desired)
        .filter_map(|p| Some((p.partition, partition_lag(p)?)))
        .collect();
    lags.sort_unstable();
    lags
}

/// The ingest consumer's client context: publishes the lag on `topic` as
/// one gauge per partition and their total, and keeps the last reading.
#[derive(Debug)]
pub struct LagContext {
    topic: String,
    last: Mutex<Vec<(i32, i64)>>,
}

impl LagContext {
    /// A context measuring the lag on `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            last: Mutex::new(Vec::new()),
        }
    }

    /// The last lag reported, per partition.
    pub fn last(&self) -> Vec<(i32, i64)> {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let lags = topic_lag(&statistics, &self.topic);
        if lags.is_empty() {
            return;
        }
        let mut total = 0;
        for (partition, lag) in &lags {
            total += lag;
            metrics::gauge!(
                "headroom_collector_consumer_lag_partition",
                "partition" => partition.to_string()
            )
            .set(*lag as f64);
        }
        metrics::gauge!("headroom_collector_consumer_lag").set(total as f64);
        if let Ok(mut last) = self.last.lock() {
            *last = lags;
        }
    }
}

impl ConsumerContext for LagContext {}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(lo: i64, hi: i64, stored: i64, committed: i64) -> Partition {
        Partition {
            partition: 0,
            desired: true,
            lo_offset: lo,
            hi_offset: hi,
            stored_offset: stored,
            committed_offset: committed,
            ..Default::default()
        }
    }

    #[test]
    fn the_stored_offset_wins_then_the_committed_one_then_the_start() {
        assert_eq!(partition_lag(&partition(0, 10, 4, 2)), Some(6));
        assert_eq!(partition_lag(&partition(0, 10, -1001, 2)), Some(8));
        assert_eq!(partition_lag(&partition(3, 10, -1001, -1001)), Some(7));
        assert_eq!(partition_lag(&partition(0, 10, 10, -1001)), Some(0));
    }

    #[test]
    fn unknown_watermarks_give_no_reading_and_retention_is_not_lag() {
        assert_eq!(partition_lag(&partition(-1, -1, 4, 4)), None);
        assert_eq!(partition_lag(&partition(-1, 10, -1001, -1001)), None);
        // The committed offset points before the first retained record.
        assert_eq!(partition_lag(&partition(50, 60, -1001, 20)), Some(10));
        // A stale high watermark never gives negative lag.
        assert_eq!(partition_lag(&partition(0, 5, 7, -1001)), Some(0));
    }
}
