//! The broker's group coordination alone: two plain librdkafka consumers
//! (no Headroom code) in one group on an 8-partition topic under a steady
//! producer; one is SIGKILLed at 40 % of the stream and started again at
//! 70 %. Its partitions must be read again within the bound the session
//! timeout gives, and every acknowledged record read. When the collector's
//! fault test (`collector/tests/group.rs`) fails and this one passes, the
//! collector is at fault; when both fail, the broker is.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use headroom_testkit::{
    self as kit,
    group::{
        GroupSettings, PlainConsumer, Reads, SteadyProducer, takeover_bound, wait_for_takeover,
    },
};

const PARTITIONS: i32 = 8;
const RECORDS: u64 = 60_000;
const SESSION: Duration = Duration::from_secs(6);
const HEARTBEAT: Duration = Duration::from_secs(1);

fn lock(reads: &Mutex<Reads>) -> std::sync::MutexGuard<'_, Reads> {
    reads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_consumers_in_one_group_survive_the_death_of_a_member() -> anyhow::Result<()> {
    kit::init_logs();
    let broker = kit::PrivateBroker::start()?;
    let topic = kit::unique_name("plaingroup");
    kit::create_topic_on(&broker.address(), &topic, PARTITIONS).await?;
    let settings = GroupSettings {
        brokers: broker.address(),
        topic: topic.clone(),
        group: kit::unique_name("plain"),
        session_timeout: SESSION,
        heartbeat_interval: HEARTBEAT,
    };
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_headroom-group-consumer"));
    let reads = Arc::new(Mutex::new(Reads::default()));
    let mut a = PlainConsumer::start(bin, "a", &settings, reads.clone())?;
    let _b = PlainConsumer::start(bin, "b", &settings, reads.clone())?;
    kit::eventually(
        "both members holding partitions",
        Duration::from_secs(60),
        || async {
            let r = lock(&reads);
            let held: Vec<usize> = ["a", "b"]
                .iter()
                .map(|m| r.assigned.get(*m).map_or(0, |s| s.len()))
                .collect();
            (held.iter().all(|n| *n > 0) && held.iter().sum::<usize>() == PARTITIONS as usize)
                .then_some(())
        },
    )
    .await?;

    // 60,000 records, 100 every 100 ms: a minute of steady load.
    let producer = SteadyProducer::start(
        &settings.brokers,
        &topic,
        PARTITIONS,
        RECORDS,
        100,
        Duration::from_millis(100),
        |n, _| (format!("k{n}"), n.to_le_bytes().to_vec()),
    )?;
    producer
        .wait_for_fraction(0.4, Duration::from_secs(120))
        .await?;
    let victim: Vec<i32> = lock(&reads)
        .assigned
        .get(a.name())
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    anyhow::ensure!(!victim.is_empty(), "member a held no partitions at 40 %");
    let killed = Instant::now();
    a.kill()?;
    let bound = takeover_bound(SESSION, HEARTBEAT);
    let took = wait_for_takeover(&victim, killed, bound + Duration::from_secs(60), |p| {
        let reads = reads.clone();
        async move { lock(&reads).records.get(&p).copied().unwrap_or(0) }
    })
    .await?;
    println!(
        "plain consumers: partitions {victim:?} of the killed member read again {:.1} s after the kill (bound {:.0} s: session {:.0} s + 2 x heartbeat {:.0} s + 5 s)",
        took.as_secs_f64(),
        bound.as_secs_f64(),
        SESSION.as_secs_f64(),
        HEARTBEAT.as_secs_f64()
    );

    producer
        .wait_for_fraction(0.7, Duration::from_secs(120))
        .await?;
    let _a_again = PlainConsumer::start(bin, "a-again", &settings, reads.clone())?;
    let delivered = producer.finish().await?;
    let all = kit::eventually(
        "every acknowledged record read",
        Duration::from_secs(90),
        || async {
            let r = lock(&reads);
            r.missing(&delivered).is_empty().then_some(())
        },
    )
    .await;
    let (read, distinct, missing) = {
        let r = lock(&reads);
        (
            r.records.values().sum::<i64>(),
            r.offsets.values().map(|o| o.len()).sum::<usize>(),
            r.missing(&delivered),
        )
    };
    println!(
        "plain consumers: {distinct} of {RECORDS} records read ({} read again after the kill)",
        read - distinct as i64
    );
    all.map_err(|e| anyhow::anyhow!("{e}: unread per partition {missing:?}"))?;
    assert!(
        took <= bound,
        "the killed member's partitions were read again after {took:?}, above the bound {bound:?}: the broker's group coordination is slow or broken"
    );
    Ok(())
}
