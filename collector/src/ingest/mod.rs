//! The usage-topic consumer. One task gathers records into batches (bounded
//! by count and time), dead-letters the invalid ones, and hands each batch
//! to a writer task that commits it to PostgreSQL and only then stores the
//! batch's offsets (at-least-once delivery; the natural key makes the stored
//! result exactly-once). While PostgreSQL is down the writer retries with
//! backoff and the consumer stops taking records.

mod deadletter;
pub mod decode;
pub mod lag;
mod writer;

use std::{sync::Arc, time::Duration};

use headroom_serving::retry::{Retried, RetryPolicy, retry};
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::BorrowedMessage,
    producer::FutureProducer,
    types::RDKafkaErrorCode,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    Shared,
    error::{Error, Result},
};
use deadletter::Rejected;
use decode::{Decoded, decode};
pub use writer::ConflictLog;
use writer::{DeadLetters, Pending, Source};

/// Header naming why a record was dead-lettered.
pub const DLQ_REASON_HEADER: &str = "headroom-dlq-reason";
/// Headers locating the original record.
pub const DLQ_SOURCE_HEADERS: [&str; 3] = [
    "headroom-source-topic",
    "headroom-source-partition",
    "headroom-source-offset",
];

/// Where and how to consume. Its `Debug` shows the Kafka options' keys
/// only: their values may be secrets.
#[derive(Clone, clap::Args)]
pub struct IngestOptions {
    /// Kafka bootstrap servers.
    #[arg(long, env = "HEADROOM_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Usage topic to consume.
    #[arg(long, env = "HEADROOM_TOPIC", default_value = "headroom-usage")]
    pub topic: String,
    /// Dead-letter topic for records that cannot be stored; empty (the
    /// default) means the usage topic's name followed by `-dlq`, so each
    /// pipeline keeps its own dead letters.
    #[arg(long, env = "HEADROOM_DLQ_TOPIC", default_value = "")]
    pub dlq_topic: String,
    /// Consumer group; collectors in one group share the partitions.
    #[arg(long, env = "HEADROOM_GROUP", default_value = "headroom-collector")]
    pub group: String,
    /// Partitions of the topics when the collector has to create them.
    #[arg(long, env = "HEADROOM_TOPIC_PARTITIONS", default_value_t = 8)]
    pub partitions: i32,
    /// Most records in one batch (one transaction).
    #[arg(long, env = "HEADROOM_BATCH_RECORDS", default_value_t = 5000)]
    pub batch_records: usize,
    /// Longest a batch waits to fill up, e.g. "200ms".
    #[arg(long, env = "HEADROOM_BATCH_WAIT", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,
    /// How far in the future a sample may lie before it is dead-lettered.
    #[arg(long, env = "HEADROOM_MAX_FUTURE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_future: Duration,
    /// Consumer group session timeout.
    #[arg(long, env = "HEADROOM_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// Extra librdkafka settings as key=value (security.protocol, sasl.*,
    /// ssl.*), applied to the consumer and the dead-letter producer.
    #[arg(
        long = "kafka-option",
        env = "HEADROOM_KAFKA_OPTIONS",
        // Values may hold passwords: `--help` must not print them.
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
    /// Maintain the per-minute and per-hour rollups as batches commit.
    #[arg(long, env = "HEADROOM_ROLLUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rollups: bool,
}

impl std::fmt::Debug for IngestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestOptions")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("group", &self.group)
            .field("partitions", &self.partitions)
            .field("batch_records", &self.batch_records)
            .field("batch_wait", &self.batch_wait)
            .field("max_future", &self.max_future)
            .field("session_timeout", &self.session_timeout)
            .field(
                "kafka_options",
                &headroom_serving::options::redact_key_values(&self.kafka_options),
            )
            .field("rollups", &self.rollups)
            .finish()
    }
}

impl IngestOptions {
    /// Options for `brokers` and `topic` (its dead-letter topic named
    /// after it) with every other value at its default.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        let mut options: Self = headroom_serving::options::clap_defaults()
            .expect("every IngestOptions field has a default");
        options.brokers = brokers.into();
        options.topic = topic;
        options.with_dlq_default()
    }

    /// The options with the dead-letter topic named after the usage topic
    /// (`<topic>-dlq`) when none was given.
    pub fn with_dlq_default(mut self) -> Self {
        if self.dlq_topic.is_empty() {
            self.dlq_topic = format!("{}-dlq", self.topic);
        }
        self
    }

    fn client_config(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let pairs = headroom_serving::options::key_values(&self.kafka_options)
            .map_err(|e| Error::InvalidArgument(format!("kafka {e}")))?;
        for (k, v) in pairs {
            config.set(k, v);
        }
        Ok(config)
    }
}

/// A client librdkafka refused to create is a configuration error, not a
/// broker outage: it is not retried.
fn refused(e: rdkafka::error::KafkaError) -> Error {
    use rdkafka::error::KafkaError;
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
            Error::InvalidArgument(format!("kafka settings refused: {e}"))
        }
        other => Error::Kafka(other),
    }
}

/// Creates the usage and dead-letter topics when they are missing (the
/// dead-letter topic as given: [`run`] has applied its default).
async fn ensure_topics(options: &IngestOptions) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        options.client_config()?.create().map_err(refused)?;
    let topics = [
        NewTopic::new(
            &options.topic,
            options.partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &options.dlq_topic,
            options.partitions.clamp(1, 4),
            TopicReplication::Fixed(1),
        ),
    ];
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new()
                .operation_timeout(Some(Duration::from_secs(10)))
                .request_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka(rdkafka::error::KafkaError::AdminOp(code)))
                    .inspect_err(|_| tracing::warn!(topic, %code, "topic could not be created"));
            }
        }
    }
    Ok(())
}

/// The usage-topic consumer, reporting its lag.
type IngestConsumer = StreamConsumer<lag::LagContext>;

/// Consumes until `shutdown`, then drains: the batch in hand is committed
/// and its offsets committed to the group.
pub async fn run(
    options: IngestOptions,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<()> {
    let options = options.with_dlq_default();
    // A configuration librdkafka refuses is final; a broker that does not
    // answer yet is waited for.
    let not_configuration = |e: &Error| !matches!(e, Error::InvalidArgument(_));
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::DEFAULT
    };
    match retry(
        "topic setup (kafka not ready)",
        &once,
        &shutdown,
        not_configuration,
        || ensure_topics(&options),
    )
    .await
    {
        Retried::Done(()) => {}
        Retried::GaveUp(e) => return Err(e),
        Retried::Cancelled => return Ok(()),
    }
    let consumer: Arc<IngestConsumer> = Arc::new(
        options
            .client_config()?
            .set("group.id", &options.group)
            .set(
                "statistics.interval.ms",
                lag::LAG_EVERY.as_millis().to_string(),
            )
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                options.session_timeout.as_millis().to_string(),
            )
            .create_with_context(lag::LagContext::new(&options.topic))
            .map_err(refused)?,
    );
    consumer.subscribe(&[&options.topic])?;
    let producer: FutureProducer = options
        .client_config()?
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(refused)?;
    tracing::info!(topic = %options.topic, group = %options.group, "ingest started");

    // Capacity 1: one batch is written while the next one is gathered; when
    // the writer is stuck (database down) the consumer stops taking records.
    let (tx, rx) = mpsc::channel::<Pending>(1);
    let writer = tokio::spawn(writer::write_loop(
        rx,
        consumer.clone(),
        DeadLetters {
            producer: producer.clone(),
            options: options.clone(),
        },
        options.rollups,
        shared,
        shutdown.clone(),
    ));

    while !shutdown.is_cancelled() {
        let (pending, rejected) = gather(&consumer, &options, &shutdown).await;
        if pending.records == 0 {
            continue;
        }
        if !deadletter::send(&producer, &options, rejected, &shutdown).await {
            // Shutdown during a broker outage: the batch is not stored and
            // its offsets not stored, so it is consumed again next time.
            break;
        }
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    match writer.await {
        Ok(()) => {}
        Err(e) => tracing::error!(error = %e, "ingest writer panicked"),
    }
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored yet, or the broker is gone: stored rows stay, and
        // their replay later is a no-op.
        tracing::debug!(error = %e, "final offset commit skipped");
    }
    tracing::info!("ingest stopped");
    Ok(())
}

/// Gathers up to `batch_records` records or until `batch_wait` has passed
/// since the first one.
async fn gather(
    consumer: &IngestConsumer,
    options: &IngestOptions,
    shutdown: &CancellationToken,
) -> (Pending, Vec<Rejected>) {
    let mut pending = Pending::default();
    let mut rejected = Vec::new();
    let first = tokio::select! {
        _ = shutdown.cancelled() => return (pending, rejected),
        m = consumer.recv() => m,
    };
    let deadline = Instant::now() + options.batch_wait;
    let mut next = Some(first);
    while let Some(result) = next.take() {
        match result {
            Ok(message) => take(&message, options, &mut pending, &mut rejected),
            Err(e) => {
                tracing::warn!(error = %e, "kafka consume error");
                if pending.records == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                break;
            }
        }
        if pending.records >= options.batch_records {
            break;
        }
        next = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .ok();
    }
    (pending, rejected)
}

fn take(
    message: &BorrowedMessage<'_>,
    options: &IngestOptions,
    pending: &mut Pending,
    rejected: &mut Vec<Rejected>,
) {
    pending.records += 1;
    let offset = pending
        .offsets
        .entry(message.partition())
        .or_insert(message.offset());
    *offset = (*offset).max(message.offset());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let decoded = decode(
        message.payload(),
        now_ms,
        options.max_future.as_millis() as i64,
    );
    let record = |reason: String| Rejected {
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        reason,
        partition: message.partition(),
        offset: message.offset(),
    };
    let (rows, task) = match decoded {
        Decoded::Usage { rows, task } => (rows, task),
        Decoded::Task(task) => (Vec::new(), task),
        Decoded::Reject(reason) => return rejected.push(record(reason)),
    };
    let first = pending.batch.rows.len();
    pending.batch.push_usage(rows, task.clone());
    pending.sources.push(Source {
        record: record(String::new()),
        rows: first..pending.batch.rows.len(),
        task,
    });
}
