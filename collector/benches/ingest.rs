//! Ingest benchmark: N samples pre-produced to the topic, then the time
//! until the collector has stored them all, against `COPY` of the same rows
//! from a file into the same (freshly migrated) table, in the same run.
//!
//! `cargo bench -p headroom-collector --bench ingest [-- SAMPLES]`
//! (default 1,000,000; needs the local stack: `scripts/stack up`).

use std::{io::Write, time::Instant};

use anyhow::Context;
use headroom_collector::{CollectorConfig, ingest::IngestOptions};
use headroom_proto::{
    resource,
    time::from_unix_ms,
    v1::{Measurement, ServiceUsage, UsageMessage, usage_message::Body},
};
use headroom_serving::grpc::GrpcOptions;
use headroom_store as store;
use headroom_testkit as kit;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const T0: i64 = 1_767_225_600_000;
const SERVICES: i64 = 100;
const PARTITIONS: i32 = 4;

fn value(service: i64, tick: i64, r: usize) -> f64 {
    ((service * 7919 + tick * 104_729 + r as i64 * 31) % 10_007) as f64 / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let per_record = resource::ALL.len() as i64;
    let ticks = (samples + SERVICES * per_record - 1) / (SERVICES * per_record);
    let n = ticks * SERVICES * per_record;
    println!(
        "ingest benchmark: {n} samples = {ticks} ticks x {SERVICES} services x {per_record} resources, {PARTITIONS} partitions"
    );

    // Baseline: COPY from a file into the same table, freshly migrated.
    let base_db = kit::TestDb::new().await?;
    store::migrate(&base_db.pool).await?;
    let file = std::env::temp_dir().join(kit::unique_name("headroom_ingest") + ".csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for tick in 0..ticks {
            let ts = chrono::DateTime::from_timestamp_millis(T0 + tick * 1000).context("time")?;
            for s in 0..SERVICES {
                for r in 0..resource::ALL.len() {
                    writeln!(
                        out,
                        "bench,{},{},{},{}",
                        s + 1,
                        r + 1,
                        value(s, tick, r),
                        ts.to_rfc3339()
                    )?;
                }
            }
        }
        out.flush()?;
    }
    base_db
        .fixture(&format!(
            "INSERT INTO services (id, name) SELECT g, 'svc-' || (g - 1) FROM generate_series(1, {SERVICES}) g"
        ))
        .await?;
    let started = Instant::now();
    base_db
        .fixture(&format!(
            "COPY samples (task_id, service_id, resource_id, value, ts) FROM '{}' (FORMAT csv)",
            file.display()
        ))
        .await
        .context("while running the COPY baseline (the server must be able to read the file)")?;
    let copy_secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&file).ok();
    drop(base_db);

    // Pre-produce the same samples: one record per (service, tick).
    let topic = kit::fresh_topic("bench_ingest", PARTITIONS).await?;
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
                            value: value(s, tick, r),
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
                        FutureRecord::to(&topic)
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

    // The collector, from a cold start until the last tick of every service
    // is stored; alternately without and with rollups, twice each.
    let mut runs = Vec::new();
    for rollups in [false, true, false, true] {
        let (first, total) = run_collector(&topic, rollups, ticks, n).await?;
        runs.push((rollups, first, total));
    }
    let rate = |rollups: bool| {
        let r: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == rollups)
            .map(|r| n as f64 / (r.2 - r.1))
            .collect();
        r.iter().sum::<f64>() / r.len() as f64
    };
    let (plain, rolled) = (rate(false), rate(true));
    let (first, total_secs) = (runs[1].1, runs[1].2);
    let steady = total_secs - first;
    println!();
    println!("| what | seconds | samples/s | vs COPY |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| COPY from file (baseline) | {copy_secs:.2} | {:.0} | 1.00 |",
        n as f64 / copy_secs
    );
    println!(
        "| collector, first row to last | {steady:.2} | {:.0} | {:.2} |",
        n as f64 / steady,
        copy_secs / steady
    );
    println!(
        "| collector, cold start incl. group join ({first:.2} s to first row) | {total_secs:.2} | {:.0} | {:.2} |",
        n as f64 / total_secs,
        copy_secs / total_secs
    );
    println!();
    println!(
        "rollups maintained: {rolled:.0} samples/s; without rollups: {plain:.0} samples/s (mean of 2 runs each, first row to last)"
    );
    println!(
        "ratio with/without rollups: {:.3} (goal: at least 0.85)",
        rolled / plain
    );
    let copy_rate = n as f64 / copy_secs;
    kit::bench::record(
        "collector",
        "ingest, first row to last",
        n as f64 / steady,
        "samples/s",
        Some(("COPY from file", copy_rate)),
    );
    kit::bench::record(
        "collector",
        "ingest with rollups",
        rolled,
        "samples/s",
        Some(("without rollups", plain)),
    );
    Ok(())
}

/// One collector run over the whole topic (its own group and database):
/// seconds to the first stored row and to the last.
async fn run_collector(
    topic: &str,
    rollups: bool,
    ticks: i64,
    n: i64,
) -> anyhow::Result<(f64, f64)> {
    let db = kit::TestDb::new().await?;
    let mut ingest = IngestOptions::new(kit::kafka_brokers(), topic);
    ingest.rollups = rollups;
    ingest.group = kit::unique_name("bench");
    ingest.session_timeout = std::time::Duration::from_secs(6);
    let config = CollectorConfig {
        database_url: db.url.clone(),
        max_connections: 4,
        ingest: Some(ingest),
        lifecycle: Default::default(),
        grpc: GrpcOptions::default(),
    };
    let started = Instant::now();
    let server = kit::spawn_server(move |l, s| headroom_collector::run(l, s, config)).await?;
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
                "SELECT count(*) FROM samples x JOIN services s ON s.id = x.service_id \
                 WHERE x.task_id = 'bench' AND x.resource_id = 1 AND x.ts = '{}'",
                last_ts.to_rfc3339()
            ))
            .await?;
        if done == SERVICES {
            break;
        }
    }
    let total_secs = started.elapsed().as_secs_f64();
    server.stop().await?;
    let stored = db.scalar("SELECT count(*) FROM samples").await?;

    anyhow::ensure!(stored == n, "stored {stored} samples, want {n}");
    if rollups {
        let counted = db.scalar("SELECT sum(count)::int8 FROM rollup_1h").await?;
        anyhow::ensure!(
            counted == n,
            "rollups counted {counted:?} samples, want {n}"
        );
    }
    Ok((first_row.unwrap_or(0.0), total_secs))
}
