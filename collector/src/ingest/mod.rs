//! The usage-topic consumer. One task gathers records into batches (bounded
//! by count and time), dead-letters the invalid ones, and hands each batch
//! to a writer task that commits it to PostgreSQL and only then stores the
//! batch's offsets (at-least-once delivery; the natural key makes the stored
//! result exactly-once). While PostgreSQL is down the writer retries with
//! backoff and the consumer stops taking records.

mod deadletter;
pub mod decode;
pub mod lag;
pub mod partitions;
pub mod rebalance;
mod writer;

use std::{sync::Arc, time::Duration};

use headroom_serving::retry::{Retried, RetryPolicy, retry};
use rdkafka::{
    ClientConfig, Message, TopicPartitionList,
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
use partitions::PartitionList;
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
    /// Consumer group; collectors in one group share the partitions (the
    /// group hands each partition to one of them and moves it when one
    /// dies), and commit their offsets to it.
    #[arg(long, env = "HEADROOM_GROUP", default_value = "headroom-collector")]
    pub group: String,
    /// Static group membership: a name unique to this collector in its
    /// group that outlives restarts (in a StatefulSet, the pod name). A
    /// collector that restarts under the same name within the session
    /// timeout gets its partitions back without a rebalance; one that
    /// stays away longer loses them when the session times out. Off when
    /// empty.
    #[arg(long, env = "HEADROOM_GROUP_INSTANCE_ID", conflicts_with = "assign")]
    pub group_instance_id: Option<String>,
    /// Manual assignment, the fallback for brokers or platforms whose group
    /// coordination is unreliable: read exactly these partitions of the
    /// topic (`0-3`, `0,2,5-7`) instead of the ones the group hands out.
    /// Offsets are still committed to the group; every partition must be
    /// named by exactly one collector. Off when absent.
    #[arg(long = "partitions", env = "HEADROOM_PARTITIONS", value_name = "LIST")]
    pub assign: Option<PartitionList>,
    /// Partitions of the topics when the collector has to create them.
    #[arg(
        long = "topic-partitions",
        env = "HEADROOM_TOPIC_PARTITIONS",
        default_value_t = 8
    )]
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
    /// Consumer group session timeout (`session.timeout.ms`): how long the
    /// group waits for a silent collector before handing its partitions to
    /// the others. A killed collector's partitions are read again after
    /// about this long plus one rebalance (a few heartbeats).
    #[arg(long, env = "HEADROOM_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// How often the collector tells the group it is alive
    /// (`heartbeat.interval.ms`); also how soon it learns of a rebalance.
    /// Must be below the session timeout, customarily a third of it.
    #[arg(long, env = "HEADROOM_HEARTBEAT_INTERVAL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
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
            .field("group_instance_id", &self.group_instance_id)
            .field("assign", &self.assign.as_ref().map(ToString::to_string))
            .field("partitions", &self.partitions)
            .field("batch_records", &self.batch_records)
            .field("batch_wait", &self.batch_wait)
            .field("max_future", &self.max_future)
            .field("session_timeout", &self.session_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
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

    /// Refuses settings that cannot work together, naming them.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            return Err(Error::InvalidArgument(format!(
                "--heartbeat-interval ({}) must be above zero and below --session-timeout ({})",
                humantime::format_duration(self.heartbeat_interval),
                humantime::format_duration(self.session_timeout)
            )));
        }
        if self.group_instance_id.as_deref() == Some("") {
            return Err(Error::InvalidArgument(
                "--group-instance-id is empty; leave it out for dynamic membership".into(),
            ));
        }
        Ok(())
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

/// The usage-topic consumer, reporting its lag and following rebalances.
type IngestConsumer = StreamConsumer<rebalance::IngestContext>;

/// Reads the partitions in `list`, from the group's committed offsets,
/// after checking that the topic has them.
async fn assign_manually(
    consumer: &Arc<IngestConsumer>,
    options: &IngestOptions,
    list: &PartitionList,
) -> Result<()> {
    let (c, topic) = (consumer.clone(), options.topic.clone());
    let count = tokio::task::spawn_blocking(move || {
        c.fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .await
    .map_err(|e| Error::InvalidArgument(format!("metadata lookup failed: {e}")))??;
    if list.max() >= count as i32 {
        return Err(Error::InvalidArgument(format!(
            "--partitions {list} names partition {} but topic {} has {count} (0-{})",
            list.max(),
            options.topic,
            count.saturating_sub(1)
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in list.iter() {
        tpl.add_partition_offset(&options.topic, p, rdkafka::Offset::Stored)?;
    }
    consumer.assign(&tpl)?;
    consumer
        .context()
        .assigned(&list.iter().collect::<Vec<_>>());
    Ok(())
}

/// Consumes until `shutdown`, then drains: the batch in hand is committed
/// and its offsets committed to the group.
pub async fn run(
    options: IngestOptions,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<()> {
    let options = options.with_dlq_default();
    options.validate()?;
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
    let mut config = options.client_config()?;
    if let Some(id) = &options.group_instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: Arc<IngestConsumer> = Arc::new(
        config
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
            .set(
                "heartbeat.interval.ms",
                options.heartbeat_interval.as_millis().to_string(),
            )
            .create_with_context(rebalance::IngestContext::new(&options.topic))
            .map_err(refused)?,
    );
    match &options.assign {
        Some(list) => assign_manually(&consumer, &options, list).await?,
        None => consumer.subscribe(&[&options.topic])?,
    }
    let producer: FutureProducer = options
        .client_config()?
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(refused)?;
    tracing::info!(
        topic = %options.topic,
        group = %options.group,
        group_instance_id = options.group_instance_id.as_deref().unwrap_or(""),
        partitions = %options.assign.as_ref().map_or("assigned by the group".to_string(), ToString::to_string),
        "ingest started"
    );

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
            Ok(message) => take(consumer, &message, options, &mut pending, &mut rejected),
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

/// Adds one record to the batch, unless its partition is no longer owned
/// (revoked while the record waited in the client's queue): its next owner
/// reads it.
fn take(
    consumer: &IngestConsumer,
    message: &BorrowedMessage<'_>,
    options: &IngestOptions,
    pending: &mut Pending,
    rejected: &mut Vec<Rejected>,
) {
    let Some(epoch) = consumer.context().ownership.epoch(message.partition()) else {
        metrics::counter!("headroom_collector_records_of_revoked_partitions_total").increment(1);
        tracing::debug!(
            partition = message.partition(),
            offset = message.offset(),
            "record of a partition no longer owned left to its new owner"
        );
        return;
    };
    pending.records += 1;
    pending.note_offset(message.partition(), message.offset(), epoch);
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
