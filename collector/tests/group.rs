//! Scale-out: collectors sharing a topic, as real processes against a
//! private broker and PostgreSQL. Two collectors in one group survive the
//! SIGKILL of one of them (its partitions are read again within the bound
//! the session timeout gives; every sample stored exactly once), and two
//! collectors with disjoint `--partitions` store everything once and
//! commit their offsets to the group. The same fault scenario with plain
//! librdkafka consumers is `testkit/tests/group.rs`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use headroom_testkit::{
    self as kit,
    group::{SteadyProducer, takeover_bound, wait_for_takeover},
};
use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

const PARTITIONS: i32 = 8;
const SESSION: Duration = Duration::from_secs(6);
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Record `n` (of partition `partition`): two samples of the service named
/// after its partition, each record at its own millisecond. Recent, so
/// the retention a restarted collector applies keeps them.
fn record(base_ms: i64) -> impl Fn(u64, i32) -> (String, Vec<u8>) + Send + 'static {
    move |n, partition| {
        let service = format!("p{partition}");
        let payload = usage(
            "t-group",
            &service,
            base_ms + n as i64,
            &[("cpu", n as f64), ("memory", 1e6)],
        );
        (service, payload)
    }
}

/// Samples stored of partition `p`'s service.
async fn stored_of(db: &kit::TestDb, p: i32) -> i64 {
    db.scalar(&format!(
        "SELECT count(*) FROM samples x JOIN services s ON s.id = x.service_id WHERE s.name = 'p{p}'"
    ))
    .await
    .unwrap_or(0)
}

/// Every acknowledged record stored exactly once: two samples each, per
/// partition and in all.
async fn assert_stored_once(
    db: &kit::TestDb,
    delivered: &BTreeMap<i32, BTreeSet<i64>>,
) -> anyhow::Result<()> {
    let want: i64 = delivered.values().map(|o| 2 * o.len() as i64).sum();
    wait_for_rows(&db.pool, "t-group", want, Duration::from_secs(120)).await?;
    for (p, offsets) in delivered {
        assert_eq!(
            stored_of(db, *p).await,
            2 * offsets.len() as i64,
            "samples of partition {p}"
        );
    }
    Ok(())
}

/// A collector process on the private broker, in `group`.
fn collector(
    db: &kit::TestDb,
    broker: &kit::PrivateBroker,
    topic: &str,
    group: &str,
    metrics: std::net::SocketAddr,
) -> std::process::Command {
    let mut command = collector_command(&db.url, topic, group, metrics);
    command
        .env("HEADROOM_KAFKA_BROKERS", broker.address())
        .env("HEADROOM_TOPIC_PARTITIONS", PARTITIONS.to_string())
        .env("HEADROOM_SESSION_TIMEOUT", "6s")
        .env("HEADROOM_HEARTBEAT_INTERVAL", "1s")
        .env("HEADROOM_BATCH_RECORDS", "500")
        .env("HEADROOM_BATCH_WAIT", "50ms");
    command
}

/// The partitions a collector says it owns (its
/// `headroom_collector_partition_assigned` gauges at 1).
async fn owned(metrics: std::net::SocketAddr) -> BTreeSet<i32> {
    kit::scrape_by_label(
        metrics,
        "headroom_collector_partition_assigned",
        "partition",
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .filter(|(_, v)| *v == 1.0)
    .filter_map(|(p, _)| p.parse().ok())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_in_one_group_survive_the_death_of_a_member() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let broker = kit::PrivateBroker::start()?;
    let topic = kit::unique_name("group");
    kit::create_topic_on(&broker.address(), &topic, PARTITIONS).await?;
    let group = kit::unique_name("collectors");
    let (metrics_a, metrics_b) = (kit::free_address()?, kit::free_address()?);
    let mut a = collector(&db, &broker, &topic, &group, metrics_a).spawn()?;
    let mut b = collector(&db, &broker, &topic, &group, metrics_b).spawn()?;
    let split = kit::eventually(
        "both collectors holding partitions",
        Duration::from_secs(90),
        || async {
            let (oa, ob) = (owned(metrics_a).await, owned(metrics_b).await);
            (!oa.is_empty() && !ob.is_empty() && oa.len() + ob.len() == PARTITIONS as usize)
                .then_some((oa, ob))
        },
    )
    .await;
    if let Err(e) = split {
        a.kill()?;
        b.kill()?;
        anyhow::bail!("{e}; broker log: {}", broker.log());
    }

    // 60,000 records (120,000 samples), 100 every 100 ms.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer = SteadyProducer::start(
        &broker.address(),
        &topic,
        PARTITIONS,
        60_000,
        100,
        Duration::from_millis(100),
        record(base),
    )?;
    producer
        .wait_for_fraction(0.4, Duration::from_secs(120))
        .await?;
    let victim: Vec<i32> = owned(metrics_a).await.into_iter().collect();
    anyhow::ensure!(!victim.is_empty(), "collector a held no partitions at 40 %");
    let killed = Instant::now();
    a.kill()?; // SIGKILL: no LeaveGroup, no final commit
    a.wait()?;
    let bound = takeover_bound(SESSION, HEARTBEAT);
    let took = wait_for_takeover(&victim, killed, bound + Duration::from_secs(60), |p| {
        stored_of(&db, p)
    })
    .await;
    let took = match took {
        Ok(t) => t,
        Err(e) => {
            b.kill()?;
            return Err(e);
        }
    };
    println!(
        "collectors: partitions {victim:?} of the killed collector stored again {:.1} s after the kill (bound {:.0} s: session {:.0} s + 2 x heartbeat {:.0} s + 5 s)",
        took.as_secs_f64(),
        bound.as_secs_f64(),
        SESSION.as_secs_f64(),
        HEARTBEAT.as_secs_f64()
    );

    producer
        .wait_for_fraction(0.7, Duration::from_secs(120))
        .await?;
    let mut a = collector(&db, &broker, &topic, &group, kit::free_address()?).spawn()?;
    let delivered = producer.finish().await?;
    let stored = assert_stored_once(&db, &delivered).await;
    a.kill()?;
    b.kill()?;
    a.wait()?;
    b.wait()?;
    stored?;
    assert!(
        took <= bound,
        "the killed collector's partitions were stored again after {took:?}, above the bound {bound:?}"
    );
    Ok(())
}

/// The group's committed offsets of `topic`'s partitions.
async fn committed(
    brokers: String,
    group: String,
    topic: String,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let got = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (e.partition(), offset)
            })
            .collect())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_with_disjoint_partitions_store_everything_once() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let broker = kit::PrivateBroker::start()?;
    let topic = kit::unique_name("manual");
    kit::create_topic_on(&broker.address(), &topic, PARTITIONS).await?;
    let group = kit::unique_name("manual");
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer = SteadyProducer::start(
        &broker.address(),
        &topic,
        PARTITIONS,
        8_000,
        400,
        Duration::from_millis(100),
        record(base),
    )?;
    let mut members = Vec::new();
    for list in ["0-3", "4,5,6-7"] {
        let mut options = ingest_options(&topic);
        options.brokers = broker.address();
        options.group = group.clone();
        options.partitions = PARTITIONS;
        options.assign = Some(list.parse()?);
        members.push(start(&db.url, options).await?);
    }
    let delivered = producer.finish().await?;
    assert_stored_once(&db, &delivered).await?;
    for m in members {
        m.stop().await?;
    }
    // Offsets went to the group: a collector taking over reads on.
    let committed = committed(broker.address(), group, topic).await?;
    let want: BTreeMap<i32, i64> = delivered
        .iter()
        .map(|(p, o)| (*p, o.last().map_or(0, |last| last + 1)))
        .collect();
    assert_eq!(committed, want, "the group's committed offsets");
    Ok(())
}

#[tokio::test]
async fn a_bad_partition_list_is_refused_with_the_value_named() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let broker = kit::PrivateBroker::start()?;
    let topic = kit::unique_name("badlist");
    kit::create_topic_on(&broker.address(), &topic, PARTITIONS).await?;
    let run = |list: &str| -> anyhow::Result<(Option<i32>, String)> {
        let out = collector(&db, &broker, &topic, "g", kit::free_address()?)
            .env("HEADROOM_PARTITIONS", list)
            .stderr(Stdio::piped())
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    // Refused as it is parsed: one line naming the value.
    let (code, stderr) = run("3-1")?;
    assert_eq!(code, Some(2), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("'3-1'") && first.contains("runs backwards"),
        "{stderr}"
    );
    // Refused against the topic: it has partitions 0-7.
    let (code, stderr) = run("6-9")?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--partitions 6-9 names partition 9 but topic"),
        "{stderr}"
    );
    Ok(())
}
