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
    let server = start(&db.url, ingest_options(&topic)).await?;
    wait_for_rows(&db.pool, "t-dup", 120, Duration::from_secs(60)).await?;

    // And once more after they are stored: a replay meets stored rows.
    produce(&topic, &records, None).await?;
    let sentinels: Vec<(String, Vec<u8>)> = (0..3)
        .map(|p| {
            (
                "s".to_string(),
                usage("t-sentinel", &format!("s{p}"), T0, &[("cpu", 1.0)]),
            )
        })
        .collect();
    for (p, record) in sentinels.iter().enumerate() {
        produce(&topic, std::slice::from_ref(record), Some(p as i32)).await?;
    }
    // Sentinels come after the replay in every partition.
    wait_for_rows(&db.pool, "t-sentinel", 3, Duration::from_secs(60)).await?;
    assert_eq!(count_samples(&db.pool, "t-dup").await, 120);
    server.stop().await
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

fn spawn_collector_process(
    db_url: &str,
    topic: &str,
    group: &str,
) -> anyhow::Result<std::process::Child> {
    Ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
            .env("HEADROOM_DATABASE_URL", db_url)
            .env("HEADROOM_KAFKA_BROKERS", kit::kafka_brokers())
            .env("HEADROOM_TOPIC", topic)
            .env("HEADROOM_GROUP", group)
            .env("HEADROOM_TOPIC_PARTITIONS", "3")
            .env("HEADROOM_SESSION_TIMEOUT", "6s")
            .env("HEADROOM_BATCH_RECORDS", "50")
            .env("HEADROOM_BATCH_WAIT", "20ms")
            .env("HEADROOM_LISTEN", "127.0.0.1:0")
            .env("HEADROOM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    )
}

#[tokio::test]
async fn a_sigkilled_collector_restarts_and_stores_every_record_exactly_once() -> anyhow::Result<()>
{
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("kill", 3).await?;
    let group = kit::unique_name("collector");
    const N: i64 = 3000;
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
                                T0 + (n / 7) * 1000,
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
    let mut child = spawn_collector_process(&db.url, &topic, &group)?;
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
        child = spawn_collector_process(&db.url, &topic, &group)?;
    }
    producer.await??;
    let stored = wait_for_rows(&db.pool, "t-kill", N, Duration::from_secs(120)).await;
    child.kill()?;
    child.wait()?;
    stored
}

#[tokio::test]
async fn a_database_outage_of_ten_seconds_loses_nothing() -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    kit::init_logs();
    let pg = kit::PrivatePostgres::start()?;
    let pool = sqlx::PgPool::connect(&pg.url()).await?;
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
    let mut health = HealthClient::new(server.channel().await?);
    let check = || HealthCheckRequest {
        service: headroom_collector::SERVICE_NAME.into(),
    };
    kit::eventually(
        "health NOT_SERVING during the outage",
        Duration::from_secs(10),
        || {
            let mut health = health.clone();
            async move {
                let status = health.check(check()).await.ok()?.into_inner().status;
                (status
                    == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
                    .then_some(())
            }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    pg.start_again()?;

    let pool = sqlx::PgPool::connect(&pg.url()).await?;
    wait_for_rows(&pool, "t-outage", 800, Duration::from_secs(60)).await?;
    let status = health.check(check()).await?.into_inner().status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
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
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT value) FROM samples WHERE task_id = 't-broker'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(distinct, N, "stored values are not the produced ones");
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
