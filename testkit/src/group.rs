//! Consumer-group fault scenarios: a steady producer spread over every
//! partition of a topic, the bound within which a dead member's partitions
//! must be read again, and plain librdkafka consumers run as processes
//! (`headroom-group-consumer`, no Headroom code) so a broker's group
//! coordination can be told apart from a consumer's.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io::BufRead as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
};
use tokio::task::JoinHandle;

/// The longest a healthy group may leave a killed member's partitions
/// unread: the broker notices the death at most one session timeout after
/// the member's last heartbeat; the survivors learn of the rebalance at
/// their next heartbeat and rejoin, which a second heartbeat may be needed
/// to settle; 5 s more cover the join and sync round trips, the first
/// fetch from the committed offsets and one stored batch on a loaded
/// 2-core machine. Formula: `session + 2 x heartbeat + 5 s`.
pub fn takeover_bound(session_timeout: Duration, heartbeat_interval: Duration) -> Duration {
    session_timeout + 2 * heartbeat_interval + Duration::from_secs(5)
}

/// A producer writing `total` records to a topic at a steady rate, record
/// `n` to partition `n % partitions`, and remembering what the broker
/// acknowledged.
#[derive(Debug)]
pub struct SteadyProducer {
    acked: Arc<AtomicU64>,
    delivered: Arc<Mutex<BTreeMap<i32, BTreeSet<i64>>>>,
    /// Records it writes in all.
    pub total: u64,
    task: JoinHandle<anyhow::Result<()>>,
}

impl SteadyProducer {
    /// Starts writing `total` records to `topic` on `brokers`: `per_tick`
    /// records every `tick`, spread round-robin over `partitions`;
    /// `record(n, partition)` gives record `n`'s key and payload.
    pub fn start<F>(
        brokers: &str,
        topic: &str,
        partitions: i32,
        total: u64,
        per_tick: u64,
        tick: Duration,
        record: F,
    ) -> anyhow::Result<Self>
    where
        F: Fn(u64, i32) -> (String, Vec<u8>) + Send + 'static,
    {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "120000")
            .create()
            .context("while creating the steady producer")?;
        let acked = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(Mutex::new(BTreeMap::<i32, BTreeSet<i64>>::new()));
        let topic = topic.to_string();
        let task = tokio::spawn({
            let (acked, delivered) = (acked.clone(), delivered.clone());
            async move {
                let mut next = tokio::time::Instant::now();
                let mut n = 0;
                while n < total {
                    let chunk: Vec<(i32, String, Vec<u8>)> = (n..(n + per_tick).min(total))
                        .map(|i| {
                            let partition = (i % partitions as u64) as i32;
                            let (key, payload) = record(i, partition);
                            (partition, key, payload)
                        })
                        .collect();
                    n += chunk.len() as u64;
                    // Queued at once, then awaited: one round trip a tick.
                    let mut sends = Vec::with_capacity(chunk.len());
                    for (partition, key, payload) in &chunk {
                        let record = FutureRecord::to(&topic)
                            .key(key.as_str())
                            .payload(payload.as_slice())
                            .partition(*partition);
                        sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                    }
                    for send in sends {
                        let delivery = send
                            .await
                            .context("the producer went away")?
                            .map_err(|(e, _)| e)?;
                        delivered
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .entry(delivery.partition)
                            .or_default()
                            .insert(delivery.offset);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    next += tick;
                    tokio::time::sleep_until(next).await;
                }
                anyhow::Ok(())
            }
        });
        Ok(Self {
            acked,
            delivered,
            total,
            task,
        })
    }

    /// Records the broker has acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `fraction` of the records are acknowledged.
    pub async fn wait_for_fraction(&self, fraction: f64, timeout: Duration) -> anyhow::Result<()> {
        let want = (self.total as f64 * fraction).ceil() as u64;
        crate::eventually(
            &format!("{want} of {} records acknowledged", self.total),
            timeout,
            || async { (self.acked() >= want).then_some(()) },
        )
        .await
    }

    /// Waits for the last acknowledgement; returns the acknowledged
    /// offsets of every partition.
    pub async fn finish(self) -> anyhow::Result<BTreeMap<i32, BTreeSet<i64>>> {
        self.task.await.context("the producer task panicked")??;
        let delivered = self
            .delivered
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(delivered.clone())
    }
}

/// Waits until every partition in `partitions` has progressed beyond where
/// it was when called (`progress(p)` counts what was stored or read of
/// partition `p`), and returns the time since `since` (the kill).
pub async fn wait_for_takeover<F, Fut>(
    partitions: &[i32],
    since: Instant,
    timeout: Duration,
    mut progress: F,
) -> anyhow::Result<Duration>
where
    F: FnMut(i32) -> Fut,
    Fut: Future<Output = i64>,
{
    let mut baseline = BTreeMap::new();
    for p in partitions {
        baseline.insert(*p, progress(*p).await);
    }
    let mut waiting: BTreeSet<i32> = partitions.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let mut moved = Vec::new();
        for p in &waiting {
            if progress(*p).await > baseline[p] {
                moved.push(*p);
            }
        }
        for p in moved {
            waiting.remove(&p);
        }
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "partitions {waiting:?} of the dead member were not read again within {timeout:?} of the kill"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(since.elapsed())
}

/// Where and how a group's members consume.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic consumed.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval: Duration,
}

/// What plain consumers have read, from their standard output.
#[derive(Debug, Default)]
pub struct Reads {
    /// Partition → offsets read (by any member, any number of times).
    pub offsets: BTreeMap<i32, BTreeSet<i64>>,
    /// Partition → records read, counting repeats.
    pub records: BTreeMap<i32, i64>,
    /// Member name → the partitions it holds now.
    pub assigned: BTreeMap<String, BTreeSet<i32>>,
}

/// A plain librdkafka consumer in a group, run as its own process (the
/// `headroom-group-consumer` binary of this crate) so that a test can
/// SIGKILL it. It reports what it reads on its standard output.
#[derive(Debug)]
pub struct PlainConsumer {
    name: String,
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PlainConsumer {
    /// Starts `bin` (the path of `headroom-group-consumer`) as member
    /// `name` of the group `settings` describe; what it reads lands in
    /// `reads`.
    pub fn start(
        bin: &std::path::Path,
        name: &str,
        settings: &GroupSettings,
        reads: Arc<Mutex<Reads>>,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args([&settings.brokers, &settings.topic, &settings.group])
            .arg(settings.session_timeout.as_millis().to_string())
            .arg(settings.heartbeat_interval.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("while starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let member = name.to_string();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(mut reads) = reads.lock() else { return };
                reads.note(&member, &line);
            }
        });
        Ok(Self {
            name: name.to_string(),
            child,
            reader: Some(reader),
        })
    }

    /// The member's name in [`Reads::assigned`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGKILL: no LeaveGroup, no final commit; the group learns of the
    /// death only when the session times out.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(())
    }
}

impl Drop for PlainConsumer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

impl Reads {
    /// Folds one output line of a consumer: `read P O`, `assigned P,P,…`
    /// or `revoked P,P,…`.
    fn note(&mut self, member: &str, line: &str) {
        let mut words = line.split_whitespace();
        let parts = |w: Option<&str>| -> BTreeSet<i32> {
            w.unwrap_or("")
                .split(',')
                .filter_map(|p| p.parse().ok())
                .collect()
        };
        match words.next() {
            Some("read") => {
                let (Some(Ok(p)), Some(Ok(o))) = (
                    words.next().map(str::parse::<i32>),
                    words.next().map(str::parse::<i64>),
                ) else {
                    return;
                };
                self.offsets.entry(p).or_default().insert(o);
                *self.records.entry(p).or_default() += 1;
            }
            Some("assigned") => {
                let owned = self.assigned.entry(member.to_string()).or_default();
                owned.extend(parts(words.next()));
            }
            Some("revoked") => {
                let owned = self.assigned.entry(member.to_string()).or_default();
                for p in parts(words.next()) {
                    owned.remove(&p);
                }
            }
            _ => {}
        }
    }

    /// Acknowledged records that nobody read, per partition.
    pub fn missing(&self, delivered: &BTreeMap<i32, BTreeSet<i64>>) -> BTreeMap<i32, usize> {
        delivered
            .iter()
            .map(|(p, offsets)| {
                let read = self.offsets.get(p);
                let n = offsets
                    .iter()
                    .filter(|o| !read.is_some_and(|r| r.contains(o)))
                    .count();
                (*p, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_lines_fold_into_reads_and_assignments() {
        let mut r = Reads::default();
        r.note("a", "assigned 0,1,2,3");
        r.note("a", "read 1 7");
        r.note("a", "read 1 7");
        r.note("a", "revoked 0,1");
        r.note("a", "garbage");
        assert_eq!(r.assigned["a"], BTreeSet::from([2, 3]));
        assert_eq!(r.records[&1], 2);
        let delivered = BTreeMap::from([(1, BTreeSet::from([6, 7])), (2, BTreeSet::from([0]))]);
        assert_eq!(r.missing(&delivered), BTreeMap::from([(1, 1), (2, 1)]));
    }

    #[test]
    fn the_takeover_bound_follows_the_session_and_heartbeat() {
        assert_eq!(
            takeover_bound(Duration::from_secs(6), Duration::from_secs(1)),
            Duration::from_secs(13)
        );
    }
}
