//! The dead-letter topic: records that cannot be stored go there with their
//! original key and payload and headers saying why and where they came from.

use std::time::Duration;

use headroom_serving::retry::{Retried, RetryPolicy, retry};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

use super::{DLQ_REASON_HEADER, DLQ_SOURCE_HEADERS, IngestOptions};

/// A record for the dead-letter topic.
#[derive(Debug, Clone)]
pub(super) struct Rejected {
    /// The record's key, as consumed.
    pub(super) key: Option<Vec<u8>>,
    /// The record's payload, as consumed.
    pub(super) payload: Option<Vec<u8>>,
    /// Why it is not stored.
    pub(super) reason: String,
    /// Where it was consumed from.
    pub(super) partition: i32,
    /// Its offset in that partition.
    pub(super) offset: i64,
}

/// Sends rejected records to the dead-letter topic, retrying each until it
/// is delivered (a broker outage holds ingest rather than losing them).
/// Returns false when shutdown interrupted the retries.
pub(super) async fn send(
    producer: &FutureProducer,
    options: &IngestOptions,
    rejected: Vec<Rejected>,
    shutdown: &CancellationToken,
) -> bool {
    for r in rejected {
        tracing::warn!(partition = r.partition, offset = r.offset, reason = %r.reason, dlq_topic = %options.dlq_topic, "record sent to dead-letter topic");
        let partition = r.partition.to_string();
        let offset = r.offset.to_string();
        let sent = retry(
            "dead-letter delivery",
            &RetryPolicy::DEFAULT,
            shutdown,
            |_| true,
            || {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: DLQ_REASON_HEADER,
                        value: Some(r.reason.as_str()),
                    })
                    .insert(Header {
                        key: DLQ_SOURCE_HEADERS[0],
                        value: Some(options.topic.as_str()),
                    })
                    .insert(Header {
                        key: DLQ_SOURCE_HEADERS[1],
                        value: Some(partition.as_str()),
                    })
                    .insert(Header {
                        key: DLQ_SOURCE_HEADERS[2],
                        value: Some(offset.as_str()),
                    });
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&options.dlq_topic).headers(headers);
                if let Some(k) = &r.key {
                    record = record.key(k.as_slice());
                }
                if let Some(p) = &r.payload {
                    record = record.payload(p.as_slice());
                }
                async move {
                    producer
                        .send(record, Duration::from_secs(5))
                        .await
                        .map_err(|(e, _)| e)
                }
            },
        )
        .await;
        match sent {
            Retried::Done(_) => {
                metrics::counter!("headroom_collector_dead_lettered_total").increment(1);
            }
            Retried::GaveUp(_) | Retried::Cancelled => return false,
        }
    }
    true
}
