//! The writer: commits each batch to PostgreSQL, then stores its offsets.
//! An outage is waited out; a batch the database keeps refusing is split
//! until the refused records are isolated, which go to the dead-letter
//! topic while the rest is stored, so one bad record never stalls ingest.

use std::{ops::Range, sync::Arc};

use headroom_serving::retry::{Retried, RetryPolicy, retry};
use headroom_store::{Batch, TaskSeen, WritePath, WriteReport, write_batch};
use rdkafka::{consumer::Consumer as _, producer::FutureProducer};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{IngestConsumer, IngestOptions, deadletter::Rejected};
use crate::{Error, Shared};

/// Attempts of a whole batch the database refuses (not an outage) before
/// it is split to find the refused records.
const REFUSED_BATCH: RetryPolicy = RetryPolicy::DEFAULT;

/// Once a batch is known to hold a refused record, its parts get one
/// attempt each (outages are still waited out).
const REFUSED_PART: RetryPolicy = RetryPolicy {
    max_attempts: 1,
    ..RetryPolicy::DEFAULT
};

/// One consumed record of a batch: where it came from, the rows it gave,
/// and its original bytes in case it has to be dead-lettered.
#[derive(Debug)]
pub(super) struct Source {
    /// Partition, offset, key and payload as consumed.
    pub(super) record: Rejected,
    /// Its rows in [`Pending::batch`]`.rows`.
    pub(super) rows: Range<usize>,
    /// The task fact it carries.
    pub(super) task: TaskSeen,
}

/// A batch on its way to the writer, with the offsets it covers.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Everything to store, merged.
    pub(super) batch: Batch,
    /// The records the batch was made of, in order.
    pub(super) sources: Vec<Source>,
    /// Per partition: the highest offset read in the partition's latest
    /// ownership epoch, and that epoch (see [`super::rebalance`]).
    pub(super) offsets: std::collections::HashMap<i32, (i64, u64)>,
    /// Records consumed, stored or not.
    pub(super) records: usize,
}

impl Pending {
    /// Notes a record at `offset` of `partition`, read while the partition
    /// was owned in `epoch`. A later epoch replaces an earlier one: the
    /// earlier epoch's offsets are no longer this collector's to store.
    pub(super) fn note_offset(&mut self, partition: i32, offset: i64, epoch: u64) {
        let entry = self.offsets.entry(partition).or_insert((offset, epoch));
        if epoch > entry.1 {
            *entry = (offset, epoch);
        } else if epoch == entry.1 {
            entry.0 = entry.0.max(offset);
        }
    }

    /// The batch of the sources in `range` alone.
    fn part(&self, range: Range<usize>) -> Batch {
        let mut part = Batch::default();
        for s in &self.sources[range] {
            part.push_usage(self.batch.rows[s.rows.clone()].to_vec(), s.task.clone());
        }
        part
    }
}

/// Where the writer sends what the database refuses.
pub(super) struct DeadLetters {
    /// The dead-letter producer.
    pub(super) producer: FutureProducer,
    /// Topic names.
    pub(super) options: IngestOptions,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("dlq_topic", &self.options.dlq_topic)
            .finish_non_exhaustive()
    }
}

/// Commits batches, then stores their offsets, until the channel closes or
/// `shutdown` (a batch not yet stored is then replayed at the next start).
pub(super) async fn write_loop(
    mut rx: mpsc::Receiver<Pending>,
    consumer: Arc<IngestConsumer>,
    dead_letters: DeadLetters,
    rollups: bool,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let topic = dead_letters.options.topic.clone();
    while let Some(pending) = rx.recv().await {
        let started = Instant::now();
        let Some(stored) = store(&pending, rollups, &shared, &dead_letters, &shutdown).await else {
            // Not stored, offsets not stored: replayed next time.
            return;
        };
        metrics::histogram!("headroom_collector_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::debug!(
            records = pending.records,
            inserted = stored.inserted,
            duplicates = stored.duplicates,
            dedup = stored.path == WritePath::Dedup,
            "batch stored"
        );
        let ownership = &consumer.context().ownership;
        for (partition, (offset, epoch)) in &pending.offsets {
            // store_offset stores offset + 1 itself: the next record to read.
            match ownership.while_owned(*partition, *epoch, || {
                consumer.store_offset(&topic, *partition, *offset)
            }) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(partition, offset, error = %e, "offset not stored; the batch may be replayed (harmless)");
                }
                None => {
                    // Revoked since it was read: the rows are stored, but
                    // the offset belongs to the partition's next owner, who
                    // replays them as no-ops.
                    metrics::counter!("headroom_collector_offsets_abandoned_total").increment(1);
                    tracing::info!(
                        partition,
                        offset,
                        "partition revoked during its batch; offset left to its new owner"
                    );
                }
            }
        }
        if shared.live.receiver_count() > 0 {
            let _ = shared.live.send(Arc::new(pending.batch.rows));
        }
    }
}

/// Stores the whole batch, or, when the database keeps refusing it, every
/// part of it it accepts, dead-lettering the records it refuses. `None` on
/// shutdown (nothing more is stored).
async fn store(
    pending: &Pending,
    rollups: bool,
    shared: &Shared,
    dead_letters: &DeadLetters,
    shutdown: &CancellationToken,
) -> Option<WriteReport> {
    let first = match attempt(&pending.batch, &REFUSED_BATCH, rollups, shared, shutdown).await {
        Retried::Done(report) => return Some(report),
        Retried::Cancelled => return None,
        Retried::GaveUp(e) => e,
    };
    tracing::warn!(error = %first, records = pending.sources.len(), "the database refuses this batch; storing it in parts to isolate the refused records");
    let mut total = WriteReport {
        inserted: 0,
        duplicates: 0,
        conflicts: Vec::new(),
        path: WritePath::Dedup,
    };
    let mut refused = Vec::new();
    let mut parts: Vec<Range<usize>> = Vec::new();
    parts.push(0..pending.sources.len());
    while let Some(range) = parts.pop() {
        if range.is_empty() {
            continue;
        }
        let part = pending.part(range.clone());
        match attempt(&part, &REFUSED_PART, rollups, shared, shutdown).await {
            Retried::Done(r) => {
                total.inserted += r.inserted;
                total.duplicates += r.duplicates;
                total.conflicts.extend(r.conflicts);
            }
            Retried::Cancelled => return None,
            Retried::GaveUp(e) if range.len() == 1 => {
                let mut record = pending.sources[range.start].record.clone();
                record.reason = format!("refused by the database: {e}");
                refused.push(record);
            }
            Retried::GaveUp(_) => {
                let mid = range.start + range.len() / 2;
                parts.push(mid..range.end);
                parts.push(range.start..mid);
            }
        }
    }
    let n = refused.len() as u64;
    for r in &refused {
        tracing::error!(partition = r.partition, offset = r.offset, reason = %r.reason, dlq_topic = %dead_letters.options.dlq_topic, "record refused by the database moved to the dead-letter topic");
    }
    if !super::deadletter::send(
        &dead_letters.producer,
        &dead_letters.options,
        refused,
        shutdown,
    )
    .await
    {
        return None;
    }
    metrics::counter!("headroom_collector_refused_total").increment(n);
    Some(total)
}

/// Writes `batch`, waiting out database outages (health NOT_SERVING
/// meanwhile) and retrying other failures as `policy` allows.
async fn attempt(
    batch: &Batch,
    policy: &RetryPolicy,
    rollups: bool,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Retried<WriteReport, Error> {
    let result = retry(
        "batch write",
        policy,
        shutdown,
        Error::is_connection,
        || async {
            let written = write_batch(&shared.pool, &shared.lookups, batch, rollups)
                .await
                .map_err(Error::from);
            if let Err(e) = &written
                && e.is_connection()
            {
                shared.set_ready(false).await;
            }
            written
        },
    )
    .await;
    if let Retried::Done(report) = &result {
        shared.set_ready(true).await;
        metrics::counter!("headroom_collector_samples_ingested_total").increment(report.inserted);
        metrics::counter!("headroom_collector_duplicates_total").increment(report.duplicates);
        metrics::counter!("headroom_collector_conflicts_total")
            .increment(report.conflicts.len() as u64);
        for c in &report.conflicts {
            shared.conflict_log.report(c);
        }
    }
    result
}

/// Warns about conflicts (a stored key met with another value: two sources
/// claim one sample), at most once per series per minute so a
/// misconfigured pair of agents cannot flood the log.
#[derive(Debug, Default)]
pub struct ConflictLog {
    /// When each series (task, service, instance, resource) was last logged.
    last: std::sync::Mutex<std::collections::HashMap<SeriesKey, Instant>>,
}

/// A series with its instance: task, service, instance, resource.
type SeriesKey = (String, String, String, &'static str);

impl ConflictLog {
    /// How often one series' conflicts are logged.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Logs `c` unless its series was logged less than [`Self::EVERY`] ago.
    pub fn report(&self, c: &headroom_store::Conflict) {
        let key = (
            c.task_id.clone(),
            c.service.clone(),
            c.instance.clone(),
            c.resource,
        );
        let now = Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < Self::EVERY)
        {
            return;
        }
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < Self::EVERY);
        }
        last.insert(key, now);
        tracing::warn!(
            task_id = %c.task_id,
            service = %c.service,
            instance = %c.instance,
            resource = c.resource,
            ts_us = c.ts_us,
            kept = c.kept,
            refused = c.refused,
            "conflicting sample: its key is stored with another value; the stored value is kept"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn a_later_epoch_replaces_the_offsets_of_an_earlier_one() {
        let mut p = Pending::default();
        p.note_offset(0, 10, 1);
        p.note_offset(0, 12, 1);
        p.note_offset(0, 11, 1);
        assert_eq!(p.offsets[&0], (12, 1));
        // Revoked and assigned again: the group's committed offset may be
        // lower, and only the new epoch's records count.
        p.note_offset(0, 5, 2);
        assert_eq!(p.offsets[&0], (5, 2));
        // A straggler of the old epoch changes nothing.
        p.note_offset(0, 13, 1);
        assert_eq!(p.offsets[&0], (5, 2));
    }
}
