//! Scale-out benchmark: N samples pre-produced to an 8-partition topic,
//! then the time until they are all stored by one collector (the baseline)
//! and by two collectors sharing a consumer group, in the same run,
//! alternately (one, two, one, two), each run into a fresh database.
//!
//! `cargo bench -p headroom-collector --bench scale_out [-- SAMPLES]`
//! (default 600,000; needs the local stack: `scripts/stack up`). On a
//! 2-core machine that also runs the broker and PostgreSQL, expect no
//! gain: the figure is there to compare with bigger machines.

use std::time::Instant;

use anyhow::Context;
use headroom_collector::{CollectorConfig, ingest::IngestOptions};
use headroom_proto::{
    resource,
    time::from_unix_ms,
    v1::{Measurement, ServiceUsage, UsageMessage, usage_message::Body},
};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const T0: i64 = 1_767_225_600_000;
const SERVICES: i64 = 100;
const PARTITIONS: i32 = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(600_000);
    let per_record = resource::ALL.len() as i64;
    let ticks = (samples + SERVICES * per_record - 1) / (SERVICES * per_record);
    let n = ticks * SERVICES * per_record;
    println!(
        "scale-out benchmark: {n} samples = {ticks} ticks x {SERVICES} services x {per_record} resources, {PARTITIONS} partitions"
    );
    let topic = kit::fresh_topic("bench_scale", PARTITIONS).await?;
    produce(&topic, ticks).await?;

    let mut runs: Vec<(usize, f64, f64)> = Vec::new();
    for collectors in [1, 2, 1, 2] {
        let (first, total) = run(&topic, collectors, ticks, n).await?;
        println!(
            "  {collectors} collector(s): first row after {first:.2} s, all {n} stored after {total:.2} s"
        );
        runs.push((collectors, first, total));
    }
    let mean = |collectors: usize, f: fn(&(usize, f64, f64)) -> f64| {
        let r: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == collectors)
            .map(|r| n as f64 / f(r))
            .collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let steady = |r: &(usize, f64, f64)| r.2 - r.1;
    let cold = |r: &(usize, f64, f64)| r.2;
    let (one, two) = (mean(1, steady), mean(2, steady));
    let (one_cold, two_cold) = (mean(1, cold), mean(2, cold));
    println!();
    println!(
        "| collectors | samples/s, first row to last | vs one | samples/s, cold start incl. group join | vs one |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| 1 (baseline) | {one:.0} | 1.00 | {one_cold:.0} | 1.00 |");
    println!(
        "| 2, one group | {two:.0} | {:.2} | {two_cold:.0} | {:.2} |",
        two / one,
        two_cold / one_cold
    );
    println!("(mean of 2 runs each)");
    kit::bench::record(
        "collector",
        "ingest with two collectors in one group, first row to last",
        two,
        "samples/s",
        Some(("one collector", one)),
    );
    Ok(())
}

/// Pre-produces one record per (service, tick), service `s` to partition
/// `s % PARTITIONS`.
async fn produce(topic: &str, ticks: i64) -> anyhow::Result<()> {
    let producer: FutureProducer = kit::producer_config()
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(20_000);
    for tick in 0..ticks {
        for s in 0..SERVICES {
            let service = format!("svc-{s}");
            let payload = UsageMessage {
                body: Some(Body::Usage(ServiceUsage {
                    host: "bench".into(),
                    service: service.clone(),
                    task_id: "bench".into(),
                    task_start: Some(from_unix_ms(T0)),
                    ts: Some(from_unix_ms(T0 + tick * 1000)),
                    measurements: resource::ALL
                        .iter()
                        .enumerate()
                        .map(|(r, name)| Measurement {
                            resource: (*name).into(),
                            value: (s * 31 + tick + r as i64) as f64,
                        })
                        .collect(),
                    interval_seconds: 1.0,
                    sequence: tick as u64,
                    task_services: Vec::new(),
                    instance: String::new(),
                })),
            }
            .encode_to_vec();
            let partition = (s % i64::from(PARTITIONS)) as i32;
            pending.push(
                producer
                    .send_result(
                        FutureRecord::to(topic)
                            .key(&service)
                            .payload(&payload)
                            .partition(partition),
                    )
                    .map_err(|(e, _)| e)?,
            );
            if pending.len() >= 20_000 {
                for d in pending.drain(..) {
                    d.await?.map_err(|(e, _)| e)?;
                }
            }
        }
    }
    for d in pending.drain(..) {
        d.await?.map_err(|(e, _)| e)?;
    }
    println!(
        "pre-produced {} records in {:.2} s",
        ticks * SERVICES,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `collectors` collectors in one new group over the whole topic, into a
/// fresh database: seconds to the first stored row and to the last.
async fn run(topic: &str, collectors: usize, ticks: i64, n: i64) -> anyhow::Result<(f64, f64)> {
    let db = kit::TestDb::new().await?;
    let group = kit::unique_name("bench_scale");
    let started = Instant::now();
    let mut servers = Vec::new();
    for _ in 0..collectors {
        let mut ingest = IngestOptions::new(kit::kafka_brokers(), topic);
        ingest.group = group.clone();
        ingest.session_timeout = std::time::Duration::from_secs(6);
        ingest.heartbeat_interval = std::time::Duration::from_secs(1);
        let config = CollectorConfig {
            database_url: db.url.clone(),
            max_connections: 4,
            ingest: Some(ingest),
            lifecycle: Default::default(),
            grpc: GrpcOptions::default(),
        };
        servers.push(kit::spawn_server(move |l, s| headroom_collector::run(l, s, config)).await?);
    }
    let last_ts =
        chrono::DateTime::from_timestamp_millis(T0 + (ticks - 1) * 1000).context("time")?;
    let mut first_row: Option<f64> = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if first_row.is_none() {
            let any = db
                .scalar("SELECT count(*) FROM (SELECT 1 FROM samples LIMIT 1) x")
                .await
                .unwrap_or(0);
            if any > 0 {
                first_row = Some(started.elapsed().as_secs_f64());
            }
            continue;
        }
        let done = db
            .scalar(&format!(
                "SELECT count(*) FROM samples WHERE task_id = 'bench' AND resource_id = 1 AND ts = '{}'",
                last_ts.to_rfc3339()
            ))
            .await?;
        if done == SERVICES {
            break;
        }
        anyhow::ensure!(
            started.elapsed().as_secs() < 600,
            "not all stored after 10 minutes"
        );
    }
    let total = started.elapsed().as_secs_f64();
    for s in servers {
        s.stop().await?;
    }
    let stored = db.scalar("SELECT count(*) FROM samples").await?;
    anyhow::ensure!(stored == n, "stored {stored} samples, want {n}");
    Ok((first_row.unwrap_or(0.0), total))
}
