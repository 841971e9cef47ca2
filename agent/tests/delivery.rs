//! Delivery through a broker outage, against a private tansu: the broker is
//! stopped for 10 s while records keep coming, then restarted; every record
//! published from the outage on arrives, once, in order per key. And with a
//! spool too small for the outage, exactly the records the agent refused
//! (and counted as dropped) are missing. And the same publisher over
//! SASL_SSL: delivered with the right password, held with a wrong one.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use headroom_agent::delivery::{Publisher, PublisherOptions};
use headroom_testkit as kit;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};
use tokio_util::sync::CancellationToken;

/// A running publisher to `broker`'s topic "usage", and what stops it.
struct Running {
    publisher: Publisher,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), headroom_agent::PublishError>>,
}

fn start_publisher(
    brokers: String,
    kafka_options: Vec<String>,
    spool_dir: &std::path::Path,
    partitions: i32,
    buffer_records: usize,
    spool_bytes: u64,
) -> anyhow::Result<Running> {
    let publisher = Publisher::new(PublisherOptions {
        brokers,
        topic: "usage".into(),
        partitions,
        buffer_records,
        spool_dir: spool_dir.to_path_buf(),
        spool_bytes,
        delivery_timeout: Duration::from_secs(2),
        kafka_options: kafka_options
            .iter()
            .filter_map(|o| o.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let p = publisher.clone();
        let s = shutdown.clone();
        async move { p.run(s).await }
    });
    Ok(Running {
        publisher,
        shutdown,
        task,
    })
}

/// A consumer of the whole "usage" topic on `broker`.
fn reader(broker: &kit::PrivateBroker) -> anyhow::Result<StreamConsumer> {
    reader_with(&broker.address(), &[])
}

/// A consumer of the whole "usage" topic at `brokers` with `options`.
fn reader_with(brokers: &str, options: &[String]) -> anyhow::Result<StreamConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", kit::unique_name("reader"))
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest");
    kit::broker::apply_options(&mut config, options);
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&["usage"])?;
    Ok(consumer)
}

#[tokio::test]
async fn a_ten_second_broker_outage_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    kit::init_logs();
    let mut broker = kit::PrivateBroker::start()?;
    let spool_dir = std::env::temp_dir().join(kit::unique_name("headroom_spool"));
    // A small buffer, so the outage spills to the spool.
    let Running {
        publisher,
        shutdown,
        task,
    } = start_publisher(broker.address(), Vec::new(), &spool_dir, 3, 50, 64 << 20)?;

    let mut i: u64 = 0;
    // One second's worth of records (20), numbered from `i`.
    fn publish_for(secs: u64, publisher: &Publisher, i: &mut u64) -> bool {
        let start = *i;
        *i += secs * 20;
        (start..*i)
            .all(|n| publisher.publish(&format!("svc-{}", n % 3), n.to_string().into_bytes()))
    }
    // Before the outage.
    for _ in 0..2 {
        assert!(publish_for(1, &publisher, &mut i));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    kit::eventually(
        "first records delivered",
        Duration::from_secs(30),
        || async { (publisher.stats.delivered.load(Ordering::Relaxed) >= 40).then_some(()) },
    )
    .await?;

    broker.stop();
    let outage_start = i;
    for _ in 0..10 {
        assert!(publish_for(1, &publisher, &mut i));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Slow machines take longer to notice; the outage lasts until they do.
    kit::eventually(
        "the outage noticed and spilled to the spool",
        Duration::from_secs(30),
        || async {
            let (_, spooled, _) = publisher.depth();
            (spooled > 0 && !publisher.stats.broker_up.load(Ordering::Relaxed)).then_some(())
        },
    )
    .await?;
    broker.start_again()?;
    for _ in 0..2 {
        assert!(publish_for(1, &publisher, &mut i));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let total = i;
    kit::eventually("queue drained", Duration::from_secs(60), || async {
        let (m, s, _) = publisher.depth();
        (m == 0 && s == 0).then_some(())
    })
    .await?;
    assert_eq!(publisher.stats.dropped.load(Ordering::Relaxed), 0);

    let consumer = reader(&broker)?;
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let want = (outage_start..total).count();
    let mut got_from_outage = 0;
    while got_from_outage < want {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let n: u64 = std::str::from_utf8(msg.payload().unwrap_or_default())?.parse()?;
        assert!(seen.insert(n), "record {n} delivered twice");
        per_key
            .entry(String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned())
            .or_default()
            .push(n);
        if n >= outage_start {
            got_from_outage += 1;
        }
    }
    for (key, ns) in &per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
    for n in outage_start..total {
        assert!(seen.contains(&n), "record {n} missing");
    }
    shutdown.cancel();
    task.await??;
    let _ = std::fs::remove_dir_all(spool_dir);
    Ok(())
}

#[tokio::test]
async fn a_full_spool_drops_exactly_the_records_it_counts() -> anyhow::Result<()> {
    kit::init_logs();
    let mut broker = kit::PrivateBroker::start()?;
    let spool_dir = std::env::temp_dir().join(kit::unique_name("headroom_spool_full"));
    // A spool with room for a few dozen records of this size, not for 600.
    let Running {
        publisher,
        shutdown,
        task,
    } = start_publisher(broker.address(), Vec::new(), &spool_dir, 1, 20, 2048)?;
    let payload = |n: u64| format!("{n:08}").into_bytes();
    for n in 0..20 {
        assert!(publisher.publish("svc", payload(n)));
    }
    kit::eventually(
        "first records delivered",
        Duration::from_secs(30),
        || async { (publisher.stats.delivered.load(Ordering::Relaxed) >= 20).then_some(()) },
    )
    .await?;

    broker.stop();
    // Records keep coming: the agent notices the outage from their failed
    // deliveries, then spools until the bound, then refuses.
    let mut refused = std::collections::BTreeSet::new();
    let mut n = 20;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while publisher.stats.broker_up.load(Ordering::Relaxed) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the outage went unnoticed"
        );
        if !publisher.publish("svc", payload(n)) {
            refused.insert(n);
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = n + 600;
    for n in n..total {
        if !publisher.publish("svc", payload(n)) {
            refused.insert(n);
        }
    }
    assert!(!refused.is_empty(), "the spool bound was never hit");
    assert!(refused.len() < 600, "nothing was spooled");
    let total_published = total;
    broker.start_again()?;
    kit::eventually("queue drained", Duration::from_secs(90), || async {
        let (m, s, _) = publisher.depth();
        (m == 0 && s == 0).then_some(())
    })
    .await?;
    let dropped = publisher.stats.dropped.load(Ordering::Relaxed);
    assert_eq!(dropped, refused.len() as u64, "drops counted");

    let consumer = reader(&broker)?;
    // The private broker keeps records in memory: those delivered before
    // its restart are gone with it, so the count starts at the outage.
    let want = (total_published - 20) as usize - refused.len();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < want {
        let msg = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => {
                let missing: Vec<u64> = (20..total_published)
                    .filter(|n| !seen.contains(n) && !refused.contains(n))
                    .collect();
                anyhow::bail!(
                    "{} of {want} accepted records arrived; accepted but missing: {missing:?}",
                    seen.len()
                );
            }
        };
        let n: u64 = std::str::from_utf8(msg.payload().unwrap_or_default())?.parse()?;
        assert!(n >= 20, "record {n} from before the restart");
        assert!(seen.insert(n), "record {n} delivered twice");
    }
    // Nothing more arrives: exactly the refused records are missing.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), consumer.recv())
            .await
            .is_err(),
        "more records than were accepted"
    );
    let missing: std::collections::BTreeSet<u64> = (20..total_published)
        .filter(|n| !seen.contains(n))
        .collect();
    assert_eq!(missing, refused);
    shutdown.cancel();
    task.await??;
    let _ = std::fs::remove_dir_all(spool_dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_sasl_ssl_and_holds_records_a_wrong_password_cannot_send()
-> anyhow::Result<()> {
    kit::init_logs();
    let pki = kit::pki::TestPki::new("agent-sasl")?;
    let (_broker, front) = kit::broker::sasl_ssl_broker(&pki, "agent", "agent-secret")?;
    let spool_dir = std::env::temp_dir().join(kit::unique_name("headroom_spool"));

    // The right password: every record arrives, read back over SASL_SSL.
    let good = kit::broker::sasl_ssl_options("agent", "agent-secret", &pki.ca);
    let running = start_publisher(front.address(), good.clone(), &spool_dir, 1, 100, 1 << 20)?;
    for n in 0..50u64 {
        assert!(running.publisher.publish("svc", n.to_string().into_bytes()));
    }
    kit::eventually("50 records delivered", Duration::from_secs(60), || async {
        (running.publisher.stats.delivered.load(Ordering::Relaxed) == 50).then_some(())
    })
    .await?;
    let consumer = reader_with(&front.address(), &good)?;
    for n in 0..50u64 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        assert_eq!(msg.payload(), Some(n.to_string().as_bytes()));
    }
    running.shutdown.cancel();
    running.task.await??;
    let _ = std::fs::remove_dir_all(&spool_dir);

    // A wrong password: nothing is delivered, and nothing is lost either:
    // the records wait in the queue and spool.
    let bad = kit::broker::sasl_ssl_options("agent", "not-the-secret", &pki.ca);
    let running = start_publisher(front.address(), bad, &spool_dir, 1, 100, 1 << 20)?;
    for n in 0..10u64 {
        assert!(running.publisher.publish("svc", n.to_string().into_bytes()));
    }
    // Delivery was tried and refused for the password before anything is
    // checked: holding records proves nothing if none was sent.
    kit::eventually(
        "a delivery refused for the password",
        Duration::from_secs(60),
        || async {
            (running
                .publisher
                .stats
                .failed_attempts
                .load(Ordering::Relaxed)
                > 0)
            .then_some(())
        },
    )
    .await?;
    let error = running
        .publisher
        .stats
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert!(error.to_lowercase().contains("authentication"), "{error}");
    assert_eq!(running.publisher.stats.delivered.load(Ordering::Relaxed), 0);
    let (memory, spooled, _) = running.publisher.depth();
    assert_eq!(memory + spooled, 10, "records held while unauthenticated");
    assert_eq!(running.publisher.stats.dropped.load(Ordering::Relaxed), 0);
    running.shutdown.cancel();
    let _ = running.task.await;
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok(())
}
