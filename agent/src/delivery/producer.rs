//! A Kafka producer whose delivery reports resolve futures, polled by its
//! own thread with a long poll timeout.
//!
//! rdkafka's `FutureProducer` polls every 100 ms, and rdkafka 0.39's poll
//! loop spins on a zero timeout through the last fraction of a millisecond
//! of every poll: about 0.9 % of a core on an idle agent (found with `perf
//! record`). Delivery reports are dispatched as they arrive whatever the
//! poll timeout, so a one-second poll costs nothing in latency and a tenth
//! of that spin.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    error::KafkaError,
    message::DeliveryResult,
    producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext},
    types::RDKafkaErrorCode,
};
use tokio::sync::oneshot;

/// The context that completes each record's delivery future.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// The client's last error (authentication, TLS, resolution): a
    /// delivery report only says that a record timed out, this says why.
    client_error: Mutex<Option<String>>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(%error, reason, "kafka client error");
        // "All brokers down" follows every cause; keep the cause.
        if matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)) {
            return;
        }
        if let Ok(mut last) = self.client_error.lock() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let _ = done.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// A producer and its polling thread, which stops when this is dropped.
pub(crate) struct Producer {
    inner: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates the producer and starts its polling thread.
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let inner: Arc<BaseProducer<Reports>> =
            Arc::new(config.create_with_context(Reports::default())?);
        let stop = Arc::new(AtomicBool::new(false));
        let (producer, stopped) = (inner.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-reports".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    producer.poll(Duration::from_secs(1));
                }
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Self { inner, stop })
    }

    /// Queues one record; resolves when the broker confirmed or refused it
    /// (after `message.timeout.ms` at the latest).
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), KafkaError> {
        let (done, report) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(done))
            .key(key)
            .payload(payload);
        self.inner.send(record).map_err(|(e, _)| e)?;
        report.await.unwrap_or_else(|_| Err(KafkaError::Canceled))
    }

    /// The client's last error, if it reported one.
    pub(crate) fn client_error(&self) -> Option<String> {
        self.inner.context().client_error.lock().ok()?.clone()
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub(crate) fn flush(&self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
