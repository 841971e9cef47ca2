//! Ingest against the real broker and PostgreSQL: duplicates, dead letters,
//! a SIGKILLed collector, a database outage and a killed broker.

mod common;

use std::{collections::HashMap, process::Stdio, time::Duration};

use anyhow::Context;
use common::*;
use headroom_collector::ingest::{DLQ_REASON_HEADER, DLQ_SOURCE_HEADERS};
use headroom_testkit as kit;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
    message::Headers,
};

/// The collector's own count of a metric, 0 until it reports it.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    kit::scrape_metric(addr, name)
        .await
        .ok()
        .flatten()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn records_produced_twice_are_stored_once() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("dup", 3).await?;
    let records: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            let service = ["api", "db", "worker"][i % 3];
            let ts = T0 + (i as i64 / 3) * 1000;
            (
                service.to_string(),
                usage("t-dup", service, ts, &[("cpu", 0.5), ("memory", 1e8)]),
            )
        })
        .collect();
    produce(&topic, &records, None).await?;
    // The same records again, in the same batch window.
    produce(&topic, &records, None).await?;
    let metrics = kit::free_address()?;
    let mut child =
        spawn_collector_process(&db.url, &topic, &kit::unique_name("collector"), metrics)?;
    wait_for_rows(&db.pool, "t-dup", 120, Duration::from_secs(60)).await?;

    // And once more after they are stored: a replay meets stored rows.
    produce(&topic, &records, None).await?;
    // Each of the 360 samples produced is stored once or reported as a
    // duplicate by the dedupe path: 120 stored, 240 duplicates.
    let reported = kit::eventually(
        "240 duplicates reported",
        Duration::from_secs(60),
        || async {
            let n = metric(metrics, "headroom_collector_duplicates_total").await;
            (n >= 240.0).then_some(n)
        },
    )
    .await;
    let ingested = metric(metrics, "headroom_collector_samples_ingested_total").await;
    child.kill()?;
    child.wait()?;
    assert_eq!(reported?, 240.0, "duplicates reported by the dedupe path");
    assert_eq!(ingested, 120.0, "samples the collector says it stored");
    assert_eq!(count_samples(&db.pool, "t-dup").await, 120);
    Ok(())
}

#[tokio::test]
async fn a_mixed_batch_stores_the_valid_records_and_dead_letters_the_rest() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("mixed", 1).await?;
    let options = ingest_options(&topic);
    let dlq = options.dlq_topic.clone();
    let far_future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x0a, 0xff, 0x01], "undecodable"),
        (
            usage("t-mixed", "api", T0, &[("cpu", f64::NAN)]),
            "not finite",
        ),
        (
            usage("t-mixed", "api", T0, &[("gpu", 1.0)]),
            "unknown resource",
        ),
        (
            usage("t-mixed", "api", far_future, &[("cpu", 1.0)]),
            "in the future",
        ),
        (usage("t-mixed", "api", T0, &[("memory", -5.0)]), "negative"),
    ];
    let mut records = Vec::new();
    for i in 0..10 {
        records.push((
            "api".to_string(),
            usage("t-mixed", "api", T0 + i * 1000, &[("cpu", 0.25)]),
        ));
        if let Some((payload, _)) = bad.get(i as usize) {
            records.push(("api".to_string(), payload.clone()));
        }
    }
    produce(&topic, &records, Some(0)).await?;
    let server = start(&db.url, options).await?;
    wait_for_rows(&db.pool, "t-mixed", 10, Duration::from_secs(60)).await?;

    let consumer: StreamConsumer =
        kit::consumer_config(&kit::unique_name("dlq-reader")).create()?;
    consumer.subscribe(&[&dlq])?;
    let mut reasons = Vec::new();
    while reasons.len() < bad.len() {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("dead-letter records missing")??;
        let headers: HashMap<String, String> = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(headers.get(DLQ_SOURCE_HEADERS[0]), Some(&topic));
        assert!(
            headers.contains_key(DLQ_SOURCE_HEADERS[2]),
            "source offset header missing"
        );
        reasons.push(
            headers
                .get(DLQ_REASON_HEADER)
                .cloned()
                .context("no reason header")?,
        );
    }
    for (_, want) in &bad {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no reason mentions {want:?}: {reasons:?}"
        );
    }
    // The collector is still alive and storing.
    produce(
        &topic,
        &[(
            "api".into(),
            usage("t-mixed", "api", T0 + 60_000, &[("cpu", 0.5)]),
        )],
        Some(0),
    )
    .await?;
    wait_for_rows(&db.pool, "t-mixed", 11, Duration::from_secs(30)).await?;
    server.stop().await
}

/// [`collector_command`] with small batches, spawned.
fn spawn_collector_process(
    db_url: &str,
    topic: &str,
    group: &str,
    metrics: std::net::SocketAddr,
) -> anyhow::Result<std::process::Child> {
    Ok(collector_command(db_url, topic, group, metrics)
        .env("HEADROOM_BATCH_RECORDS", "50")
        .env("HEADROOM_BATCH_WAIT", "20ms")
        .spawn()?)
}

#[tokio::test]
async fn a_sigkilled_collector_restarts_and_stores_every_record_exactly_once() -> anyhow::Result<()>
{
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("kill", 3).await?;
    let group = kit::unique_name("collector");
    const N: i64 = 3000;
    // Recent samples: inside the raw retention, so the maintenance every
    // collector runs at start keeps them (T0 is older than retention, and
    // a restart would discard rather than deduplicate it).
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let producer = tokio::spawn({
        let topic = topic.clone();
        async move {
            for chunk in 0..30 {
                let records: Vec<(String, Vec<u8>)> = (0..100)
                    .map(|i| {
                        let n = chunk * 100 + i;
                        let service = format!("svc-{}", n % 7);
                        (
                            service.clone(),
                            usage(
                                "t-kill",
                                &service,
                                base + (n / 7) * 1000,
                                &[("cpu", n as f64)],
                            ),
                        )
                    })
                    .collect();
                produce(&topic, &records, None).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        }
    });
    let metrics = kit::free_address()?;
    let mut child = spawn_collector_process(&db.url, &topic, &group, metrics)?;
    for round in 0..2 {
        // Let it store part of the stream, then kill it without warning.
        let before = kit::eventually(
            "progress before the kill",
            Duration::from_secs(60),
            || async {
                let n = count_samples(&db.pool, "t-kill").await;
                (n > (round + 1) * 200).then_some(n)
            },
        )
        .await?;
        child.kill()?; // SIGKILL
        child.wait()?;
        tracing::info!(round, stored = before, "collector killed");
        child = spawn_collector_process(&db.url, &topic, &group, metrics)?;
    }
    producer.await??;
    let stored = wait_for_rows(&db.pool, "t-kill", N, Duration::from_secs(120)).await;
    // The last collector replayed what the killed one stored after its last
    // offset commit: the dedupe path, not luck, kept the count exact.
    let duplicates = metric(metrics, "headroom_collector_duplicates_total").await;
    child.kill()?;
    child.wait()?;
    stored?;
    assert!(
        duplicates > 0.0,
        "the restarted collector reported no duplicates: nothing was replayed"
    );
    Ok(())
}

#[tokio::test]
async fn a_database_outage_of_ten_seconds_loses_nothing_and_the_collector_stays_live()
-> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    kit::init_logs();
    let pg = kit::PrivatePostgres::start()?;
    let pool = headroom_store::connect(&pg.url(), 2).await?;
    let topic = kit::fresh_topic("outage", 2).await?;
    let server = start(&pg.url(), ingest_options(&topic)).await?;
    let batch = |from: i64| -> Vec<(String, Vec<u8>)> {
        (from..from + 200)
            .map(|n| {
                (
                    "api".to_string(),
                    usage(
                        "t-outage",
                        "api",
                        T0 + n * 1000,
                        &[("cpu", 1.0), ("memory", 2.0)],
                    ),
                )
            })
            .collect()
    };
    produce(&topic, &batch(0), None).await?;
    wait_for_rows(&pool, "t-outage", 400, Duration::from_secs(60)).await?;
    pool.close().await;

    pg.stop()?;
    produce(&topic, &batch(200), None).await?;
    let ready = headroom_collector::SERVICE_NAME;
    wait_for_health(
        &server,
        ready,
        ServingStatus::NotServing,
        "NOT_SERVING in the outage",
    )
    .await?;
    // Readiness says the collector cannot store; liveness says the process
    // serves, so nothing restarts a collector that is waiting correctly.
    assert_eq!(
        health_of(&server, "").await,
        Some(ServingStatus::Serving as i32),
        "liveness (the server-wide entry) during the outage"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        health_of(&server, "").await,
        Some(ServingStatus::Serving as i32)
    );
    pg.start_again()?;

    let pool = headroom_store::connect(&pg.url(), 2).await?;
    wait_for_rows(&pool, "t-outage", 800, Duration::from_secs(60)).await?;
    // Back: ready again, with no restart.
    wait_for_health(&server, ready, ServingStatus::Serving, "SERVING again").await?;
    assert_eq!(
        health_of(&server, "").await,
        Some(ServingStatus::Serving as i32)
    );
    pool.close().await;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_under_load_loses_nothing() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    // A broker of this test's own on a SQLite file: topics, records and the
    // group's offsets outlive the kill, as on a real broker's disk.
    let mut broker = kit::PrivateBroker::start_durable()?;
    let topic = kit::unique_name("brokerkill");
    let mut options = ingest_options(&topic);
    options.brokers = broker.address();
    let server = start(&db.url, options).await?;

    // A steady producer: 40 chunks of 100 records, one every 100 ms. Chunks
    // sent while the broker is down wait for it and are retried.
    const N: i64 = 4000;
    let producer = tokio::spawn({
        let (topic, brokers) = (topic.clone(), broker.address());
        async move {
            let mut config = kit::producer_config();
            config.set("bootstrap.servers", &brokers);
            for chunk in 0..40 {
                let records: Vec<(String, Vec<u8>)> = (0..100)
                    .map(|i| {
                        let n = chunk * 100 + i;
                        let service = format!("svc-{}", n % 5);
                        let payload = usage(
                            "t-broker",
                            &service,
                            T0 + (n / 5) * 1000,
                            &[("cpu", n as f64)],
                        );
                        (service, payload)
                    })
                    .collect();
                produce_with(config.clone(), &topic, &records, None).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        }
    });
    let before = kit::eventually(
        "progress before the kill",
        Duration::from_secs(90),
        || async {
            let n = count_samples(&db.pool, "t-broker").await;
            (n >= 500).then_some(n)
        },
    )
    .await?;
    broker.stop(); // SIGKILL
    tracing::info!(stored = before, "broker killed");
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.start_again()?;
    tracing::info!("broker restarted");

    producer.await??;
    wait_for_rows(&db.pool, "t-broker", N, Duration::from_secs(120)).await?;
    // Every produced value, once: the stored cpu values are 0..N.
    let filter =
        headroom_store::resolve_filter(&db.pool, &[], &[], &["t-broker".into()], None, None)
            .await?;
    let query = headroom_store::export_query(None);
    let values: std::collections::HashSet<u64> = futures::TryStreamExt::try_collect::<Vec<_>>(
        headroom_store::export_rows(&db.pool, &filter, &query),
    )
    .await?
    .into_iter()
    .map(|r| r.value.to_bits())
    .collect();
    assert_eq!(
        values.len() as i64,
        N,
        "stored values are not the produced ones"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_counts_the_records_not_yet_stored() -> anyhow::Result<()> {
    use headroom_collector::ingest::lag::LagContext;
    use rdkafka::{Offset, TopicPartitionList, consumer::BaseConsumer};
    kit::init_logs();
    let topic = kit::fresh_topic("lag", 1).await?;
    let records: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| {
            (
                "api".to_string(),
                usage("t-lag", "api", T0 + i * 1000, &[("cpu", 0.5)]),
            )
        })
        .collect();
    produce(&topic, &records, Some(0)).await?;

    let t = topic.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer<LagContext> = kit::consumer_config(&kit::unique_name("lag"))
            .set("statistics.interval.ms", "100")
            .set("enable.auto.offset.store", "false")
            .create_with_context(LagContext::new(&t))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&t, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        // Polls (which also serves the statistics) until the lag reads `want`.
        let wait_for = |want: Vec<(i32, i64)>, read: &mut usize| -> anyhow::Result<()> {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Some(m) = consumer.poll(Duration::from_millis(50)) {
                    m?;
                    *read += 1;
                }
                if *read == 10 && consumer.context().last() == want {
                    return Ok(());
                }
            }
            anyhow::bail!(
                "lag {:?} after reading {read}, want {want:?}",
                consumer.context().last()
            )
        };
        let mut read = 0;
        // All ten read, none stored: the whole partition is lag.
        wait_for(vec![(0, 10)], &mut read)?;
        // Four stored (the next to store is offset 4).
        consumer.store_offset(&t, 0, 3)?;
        wait_for(vec![(0, 6)], &mut read)?;
        consumer.store_offset(&t, 0, 9)?;
        wait_for(vec![(0, 0)], &mut read)?;
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test]
async fn a_record_the_database_refuses_is_moved_aside_and_ingest_goes_on() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    // An operator's rule the collector knows nothing about: PostgreSQL
    // refuses cpu values above 1,000 cores (a check violation, not an
    // outage).
    headroom_store::migrate(&db.pool).await?;
    db.fixture("ALTER TABLE samples ADD CONSTRAINT at_most_1000 CHECK (value <= 1000)")
        .await?;
    let topic = kit::fresh_topic("refused", 1).await?;
    let dlq = format!("{topic}-dlq");
    let records: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| {
            let cpu = if i == 137 { 5000.0 } else { 0.5 };
            (
                "api".to_string(),
                usage("t-refused", "api", T0 + i * 1000, &[("cpu", cpu)]),
            )
        })
        .collect();
    produce(&topic, &records, Some(0)).await?;
    let metrics = kit::free_address()?;
    let mut child = collector_command(&db.url, &topic, &kit::unique_name("collector"), metrics)
        // No --dlq-topic: the default follows the usage topic.
        .stderr(Stdio::piped())
        .spawn()?;
    // Every other record of the batch is stored…
    let stored = wait_for_rows(&db.pool, "t-refused", 199, Duration::from_secs(90)).await;
    // … the refused one is on the dead-letter topic with the reason …
    let consumer: StreamConsumer =
        kit::consumer_config(&kit::unique_name("dlq-reader")).create()?;
    consumer.subscribe(&[&dlq])?;
    let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .context("the refused record never reached the dead-letter topic")??;
    let header = |key: &str| {
        msg.headers()
            .and_then(|h| h.iter().find(|h| h.key == key))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let reason = header(DLQ_REASON_HEADER).context("no reason header")?;
    let offset = header(DLQ_SOURCE_HEADERS[2]).context("no offset header")?;
    let payload = msg.payload().map(<[u8]>::to_vec);
    // … counted …
    let refused = kit::eventually("the refusal counted", Duration::from_secs(30), || async {
        let n = metric(metrics, "headroom_collector_refused_total").await;
        (n >= 1.0).then_some(n)
    })
    .await;
    // … and ingest goes on after it.
    produce(
        &topic,
        &[(
            "api".into(),
            usage("t-refused", "api", T0 + 300_000, &[("cpu", 0.75)]),
        )],
        Some(0),
    )
    .await?;
    let after = wait_for_rows(&db.pool, "t-refused", 200, Duration::from_secs(60)).await;
    child.kill()?;
    let out = child.wait_with_output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    stored?;
    after?;
    assert_eq!(refused?, 1.0);
    assert!(reason.starts_with("refused by the database"), "{reason}");
    assert!(
        reason.contains("at_most_1000"),
        "the reason names the constraint: {reason}"
    );
    assert_eq!(offset, "137", "the source offset of the refused record");
    assert_eq!(
        payload.as_deref(),
        Some(records[137].1.as_slice()),
        "the original payload"
    );
    assert!(
        log.contains("dead-letter topic") && log.contains(&dlq),
        "the log says where the record went: {log}"
    );
    Ok(())
}

#[tokio::test]
async fn replicas_on_two_hosts_are_all_stored_and_a_real_conflict_is_counted() -> anyhow::Result<()>
{
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("replicas", 3).await?;
    let mib = 1024.0 * 1024.0;
    // Two agents publish one service in one task at the same 60 ticks, one
    // replica at 100 MiB and one at 600 MiB, records interleaved.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..60 {
        for (host, memory) in [("host-a", 100.0 * mib), ("host-b", 600.0 * mib)] {
            records.push((
                "api".into(),
                usage_from(
                    host,
                    "t-replicas",
                    "api",
                    base + i * 10_000,
                    &[("memory", memory)],
                ),
            ));
        }
    }
    produce(&topic, &records, None).await?;
    let metrics = kit::free_address()?;
    let mut child =
        spawn_collector_process(&db.url, &topic, &kit::unique_name("collector"), metrics)?;
    let stored = wait_for_rows(&db.pool, "t-replicas", 120, Duration::from_secs(60)).await;
    let replica_conflicts = metric(metrics, "headroom_collector_conflicts_total").await;
    // A real conflict: host-a claims another value for a tick it reported.
    produce(
        &topic,
        &[(
            "api".into(),
            usage_from(
                "host-a",
                "t-replicas",
                "api",
                base + 5 * 10_000,
                &[("memory", 1.0)],
            ),
        )],
        None,
    )
    .await?;
    let conflicts = kit::eventually("the conflict counted", Duration::from_secs(30), || async {
        let n = metric(metrics, "headroom_collector_conflicts_total").await;
        (n >= 1.0).then_some(n)
    })
    .await;
    let duplicates = metric(metrics, "headroom_collector_duplicates_total").await;
    child.kill()?;
    child.wait()?;
    stored?;
    assert_eq!(replica_conflicts, 0.0, "replicas are not conflicts");
    assert_eq!(conflicts?, 1.0);
    assert_eq!(duplicates, 0.0, "a conflict is not a duplicate");
    assert_eq!(count_samples(&db.pool, "t-replicas").await, 120);
    let filter = headroom_store::resolve_filter(
        &db.pool,
        &["api".into()],
        &["memory".into()],
        &["t-replicas".into()],
        None,
        None,
    )
    .await?;
    let stats = headroom_store::usage_stats(&db.pool, &filter).await?;
    assert_eq!(
        stats[0].max,
        600.0 * mib,
        "the 600 MiB replica is kept, not merged"
    );
    let services = headroom_store::list_services(&db.pool).await?;
    assert_eq!(
        services
            .iter()
            .find(|s| s.name == "api")
            .map(|s| s.instances),
        Some(2)
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_query_only_collector_reports_its_database_going_and_coming_back()
-> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    kit::init_logs();
    let pg = kit::PrivatePostgres::start()?;
    let config = headroom_collector::CollectorConfig {
        database_url: pg.url(),
        max_connections: 2,
        ingest: None,
        lifecycle: Default::default(),
        grpc: headroom_serving::grpc::GrpcOptions::default(),
    };
    let server = kit::spawn_server(move |l, s| headroom_collector::run(l, s, config)).await?;
    let ready = headroom_collector::SERVICE_NAME;
    wait_for_health(
        &server,
        ready,
        ServingStatus::Serving,
        "ready once migrated",
    )
    .await?;
    // Nothing is written: only readiness's own check can notice.
    pg.stop()?;
    wait_for_health(
        &server,
        ready,
        ServingStatus::NotServing,
        "NOT_SERVING while down",
    )
    .await?;
    assert_eq!(
        health_of(&server, "").await,
        Some(ServingStatus::Serving as i32),
        "still live"
    );
    pg.start_again()?;
    wait_for_health(
        &server,
        ready,
        ServingStatus::Serving,
        "SERVING once it is back",
    )
    .await?;
    server.stop().await
}
