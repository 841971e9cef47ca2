//! Delivery of encoded samples to Kafka, in order, through outages: records
//! wait in a bounded in-memory queue; when it is full they go to the
//! on-disk spool behind it, and new records keep going there until the
//! spool has drained, so the order of the whole queue is the order of
//! sampling. A delivery task sends the head of the queue in chunks and
//! removes exactly the records whose delivery was confirmed; while the
//! broker is down it retries with jittered exponential backoff, without a
//! bound (records wait, they are never given up). Drops happen only when
//! the spool bound is hit, and are counted.

use std::{
    collections::{HashSet, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use headroom_serving::retry::RetryPolicy;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    producer::Producer,
    spool::{Record, Spool},
};

/// Where and how records are delivered. Its `Debug` shows the Kafka
/// options' keys only: their values may be secrets.
#[derive(Clone)]
pub struct PublisherOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Usage topic.
    pub topic: String,
    /// Partitions when the agent creates the topic.
    pub partitions: i32,
    /// Records held in memory before spilling to the spool.
    pub buffer_records: usize,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound, in bytes.
    pub spool_bytes: u64,
    /// How long one delivery may take before it counts as failed.
    pub delivery_timeout: Duration,
    /// Extra librdkafka settings (key, value).
    pub kafka_options: Vec<(String, String)>,
}

impl std::fmt::Debug for PublisherOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .kafka_options
            .iter()
            .map(|(k, _)| format!("{k}=***"))
            .collect();
        f.debug_struct("PublisherOptions")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("buffer_records", &self.buffer_records)
            .field("spool_dir", &self.spool_dir)
            .field("spool_bytes", &self.spool_bytes)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("kafka_options", &keys)
            .finish()
    }
}

/// Counters for `Status`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Records confirmed by the broker.
    pub delivered: AtomicU64,
    /// Records dropped because the spool bound was hit.
    pub dropped: AtomicU64,
    /// Whether the last delivery attempt succeeded.
    pub broker_up: AtomicBool,
    /// Delivery attempts that failed (a chunk with at least one record the
    /// broker did not confirm).
    pub failed_attempts: AtomicU64,
    /// Why the last failed attempt failed.
    pub last_error: Mutex<Option<String>>,
}

/// How long delivery waits after a failed attempt: 200 ms doubling up to
/// 5 s, each wait stretched by up to its own length at random so agents
/// that lost the same broker do not come back in step.
fn retry_delays() -> impl Iterator<Item = Duration> {
    RetryPolicy {
        min_delay: Duration::from_millis(200),
        ..RetryPolicy::DEFAULT
    }
    .delays()
}

#[derive(Debug)]
struct Queue {
    /// Oldest records, each with its sequence number.
    memory: VecDeque<(u64, Record)>,
    spool: Spool,
    /// Sequence number of the spool's first waiting record.
    spool_first: u64,
    next_seq: u64,
    /// Spooled records delivered out of prefix order (skipped, not resent).
    delivered_ahead: HashSet<u64>,
}

/// The publishing side of the agent.
#[derive(Debug, Clone)]
pub struct Publisher {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    options: Arc<PublisherOptions>,
    /// Delivery counters.
    pub stats: Arc<DeliveryStats>,
}

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The spool could not be opened.
    #[error("spool {path}: {source}")]
    Spool {
        /// Spool directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The Kafka client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Publisher {
    /// Opens the spool (records left by an earlier run are delivered first).
    pub fn new(options: PublisherOptions) -> Result<Self, PublishError> {
        let spool = Spool::open(&options.spool_dir, options.spool_bytes).map_err(|source| {
            PublishError::Spool {
                path: options.spool_dir.clone(),
                source,
            }
        })?;
        let waiting = spool.len();
        Ok(Self {
            queue: Arc::new(Mutex::new(Queue {
                memory: VecDeque::new(),
                spool,
                spool_first: 0,
                next_seq: waiting,
                delivered_ahead: HashSet::new(),
            })),
            wake: Arc::new(Notify::new()),
            options: Arc::new(options),
            stats: Arc::new(DeliveryStats::default()),
        })
    }

    /// Queues a record; returns false when it had to be dropped (counted).
    pub fn publish(&self, key: &str, payload: Vec<u8>) -> bool {
        let record = Record {
            key: key.as_bytes().to_vec(),
            payload,
        };
        let mut q = self.queue.lock().expect("queue lock poisoned");
        let accepted = if q.spool.is_empty() && q.memory.len() < self.options.buffer_records {
            let seq = q.next_seq;
            q.memory.push_back((seq, record));
            true
        } else {
            if q.spool.is_empty() {
                q.spool_first = q.next_seq;
            }
            match q.spool.push(&record) {
                Ok(true) => true,
                Ok(false) => false,
                Err(e) => {
                    tracing::error!(error = %e, "spool write failed; record dropped");
                    false
                }
            }
        };
        metrics::gauge!("headroom_agent_spool_records").set(q.spool.len() as f64);
        metrics::gauge!("headroom_agent_spool_bytes").set(q.spool.bytes() as f64);
        if accepted {
            q.next_seq += 1;
        } else {
            metrics::counter!("headroom_agent_dropped_total").increment(1);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                dropped = self.stats.dropped.load(Ordering::Relaxed),
                "spool full; record dropped"
            );
        }
        drop(q);
        self.wake.notify_one();
        accepted
    }

    /// Records waiting in memory and in the spool, and the spool's bytes.
    pub fn depth(&self) -> (u64, u64, u64) {
        let q = self.queue.lock().expect("queue lock poisoned");
        (q.memory.len() as u64, q.spool.len(), q.spool.bytes())
    }

    /// Delivers until `shutdown`; then flushes what the broker takes within
    /// a moment and spools the rest, so nothing sampled is lost.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), PublishError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.options.brokers)
            .set("compression.type", "lz4")
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set(
                "message.timeout.ms",
                self.options.delivery_timeout.as_millis().to_string(),
            );
        for (k, v) in &self.options.kafka_options {
            config.set(k, v);
        }
        let mut producer = Producer::new(&config)?;
        let mut delays = retry_delays();
        let mut topic_ready = false;
        loop {
            if !topic_ready {
                // An unreachable broker must not hold up shutdown.
                topic_ready = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ready = self.ensure_topic() => ready,
                };
            }
            let (chunk, from_spool) = self.next_chunk();
            if chunk.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => continue,
                }
            }
            let sends: Vec<_> = chunk
                .iter()
                .map(|(_, r)| producer.send(&self.options.topic, &r.key, &r.payload))
                .collect();
            let results = futures::future::join_all(sends).await;
            let delivered: Vec<u64> = chunk
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|((seq, _), _)| *seq)
                .collect();
            let failed = results.iter().find_map(|r| {
                r.as_ref().err().map(|e| match producer.client_error() {
                    Some(cause) => format!("{e} (the client last reported {cause})"),
                    None => e.to_string(),
                })
            });
            self.remove_delivered(&delivered, from_spool);
            metrics::counter!("headroom_agent_delivered_total").increment(delivered.len() as u64);
            self.stats
                .delivered
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
            match failed {
                None => {
                    self.stats.broker_up.store(true, Ordering::Relaxed);
                    delays = retry_delays();
                }
                Some(error) => {
                    let was_up = self.stats.broker_up.swap(false, Ordering::Relaxed);
                    let first = self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed) == 0;
                    metrics::counter!("headroom_agent_delivery_failures_total").increment(1);
                    if was_up || first {
                        tracing::warn!(%error, "broker unreachable; samples are buffered and spooled");
                    } else {
                        tracing::debug!(%error, "delivery still failing");
                    }
                    if let Ok(mut last) = self.stats.last_error.lock() {
                        *last = Some(error);
                    }
                    // A restarted broker does not know the idempotent
                    // producer's id; a fresh producer starts a new one.
                    producer = Producer::new(&config)?;
                    topic_ready = false;
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(2));
        self.spool_memory();
        Ok(())
    }

    /// The head of the queue: up to 500 records, memory first.
    fn next_chunk(&self) -> (Vec<(u64, Record)>, bool) {
        let mut q = self.queue.lock().expect("queue lock poisoned");
        if !q.memory.is_empty() {
            return (q.memory.iter().take(500).cloned().collect(), false);
        }
        // Skip spooled records already delivered out of order.
        loop {
            let first = q.spool_first;
            if q.spool.is_empty() || !q.delivered_ahead.remove(&first) {
                break;
            }
            if q.spool.ack(1).is_err() {
                break;
            }
            q.spool_first += 1;
        }
        match q.spool.peek(500) {
            Ok(records) => {
                let first = q.spool_first;
                let chunk = records
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (first + i as u64, r))
                    .filter(|(seq, _)| !q.delivered_ahead.contains(seq))
                    .collect();
                (chunk, true)
            }
            Err(e) => {
                tracing::error!(error = %e, "spool unreadable");
                (Vec::new(), true)
            }
        }
    }

    fn remove_delivered(&self, delivered: &[u64], from_spool: bool) {
        let mut q = self.queue.lock().expect("queue lock poisoned");
        if from_spool {
            let done: HashSet<u64> = delivered.iter().copied().collect();
            let mut prefix = 0;
            while done.contains(&(q.spool_first + prefix)) {
                prefix += 1;
            }
            if let Err(e) = q.spool.ack(prefix) {
                tracing::error!(error = %e, "spool cursor not saved; records may be sent again");
            }
            q.spool_first += prefix;
            let first = q.spool_first;
            q.delivered_ahead
                .extend(done.into_iter().filter(|s| *s >= first));
        } else {
            let done: HashSet<u64> = delivered.iter().copied().collect();
            q.memory.retain(|(seq, _)| !done.contains(seq));
        }
    }

    /// Moves records still in memory to the front of the spool on shutdown.
    fn spool_memory(&self) {
        let mut q = self.queue.lock().expect("queue lock poisoned");
        if q.memory.is_empty() {
            let _ = q.spool.sync();
            return;
        }
        // Memory is older than the spool: rewrite the spool behind it.
        let mut ordered: Vec<Record> = q.memory.drain(..).map(|(_, r)| r).collect();
        let waiting = q.spool.len() as usize;
        match q.spool.peek(waiting) {
            Ok(rest) => ordered.extend(rest),
            Err(e) => tracing::error!(error = %e, "spool unreadable at shutdown"),
        }
        let _ = q.spool.ack(waiting as u64);
        let mut lost = 0;
        for r in &ordered {
            if !matches!(q.spool.push(r), Ok(true)) {
                lost += 1;
            }
        }
        let _ = q.spool.sync();
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(lost, "spool full at shutdown; records dropped");
        }
        tracing::info!(
            spooled = ordered.len() - lost as usize,
            "undelivered records spooled for the next start"
        );
    }

    async fn ensure_topic(&self) -> bool {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.options.brokers);
        for (k, v) in &self.options.kafka_options {
            config.set(k, v);
        }
        let Ok(admin) = config.create::<AdminClient<DefaultClientContext>>() else {
            return false;
        };
        let topic = NewTopic::new(
            &self.options.topic,
            self.options.partitions,
            TopicReplication::Fixed(1),
        );
        match admin
            .create_topics(
                &[topic],
                &AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(5)))
                    .request_timeout(Some(self.options.delivery_timeout)),
            )
            .await
        {
            Ok(results) => results
                .iter()
                .all(|r| matches!(r, Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)))),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_up_to_a_bound_and_never_give_up() {
        let runs: Vec<Vec<Duration>> = (0..2).map(|_| retry_delays().take(40).collect()).collect();
        for delays in &runs {
            assert_eq!(delays.len(), 40, "a delay for every retry");
            assert!(
                (Duration::from_millis(200)..Duration::from_millis(400)).contains(&delays[0]),
                "{delays:?}"
            );
            assert!(delays[10..].iter().all(|d| *d >= Duration::from_secs(5)));
            assert!(delays.iter().all(|d| *d < Duration::from_secs(10)));
        }
        assert_ne!(runs[0], runs[1], "two agents do not retry in step");
    }
}
