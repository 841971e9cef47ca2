//! Allocator figures, each against a baseline measured in the same run:
//!
//! - `Recommend` (percentile) for a task of 1,000 services, answered from
//!   the history snapshot and read from the collector, against a gRPC
//!   health check of the same server (the floor of any call); `auto` from
//!   the same snapshot without a model and with one (its candidates'
//!   costs kept in the snapshot), against percentile's figure;
//! - `Backtest` over 100 held-out simulated tasks (history-based and
//!   model-based strategies), against reading the same held-out samples
//!   (`ExportSamples`).
//!
//! `cargo bench -p headroom-allocator --bench allocator` (needs the local
//! stack: `scripts/stack up`, `source .stack/env`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use headroom_allocator::ServiceOptions;
use headroom_proto::v1::{
    self, allocator_client::AllocatorClient, collector_client::CollectorClient,
};
use headroom_simulator::{SimOptions, Workload};
use headroom_testkit as kit;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A backtest's answer as the CLI's table.
fn table(answer: &v1::BacktestResponse) -> anyhow::Result<String> {
    let report = headroom_allocator::grpc::backtest::report(answer.clone())?;
    Ok(headroom_allocator::render::table(&report))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn snapshot(on: bool) -> ServiceOptions {
    ServiceOptions {
        snapshot_every: on.then_some(Duration::from_secs(3600)),
        ..ServiceOptions::default()
    }
}

async fn health(server: &kit::TestServer) -> anyhow::Result<Duration> {
    let mut h = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        h.check(tonic_health::pb::HealthCheckRequest {
            service: headroom_allocator::SERVICE_NAME.into(),
        })
        .await?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    support::init_ort()?;

    // --- Recommend for 1,000 services -------------------------------------
    let db = kit::TestDb::new().await?;
    let wide = Workload::new(&SimOptions {
        seed: 3,
        services: 1100,
        tasks: 130,
        min_task_services: 50,
        max_task_services: 50,
        min_duration: Duration::from_secs(600),
        max_duration: Duration::from_secs(600),
        interval: Duration::from_secs(30),
        spacing: Duration::from_secs(120),
        ..SimOptions::default()
    })?;
    let t = Instant::now();
    let stored = wide.write_postgres(&db.pool).await?;
    println!(
        "history: {stored} samples of 1,100 services written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut seen = vec![false; wide.services.len()];
    for t in &wide.tasks {
        for s in &t.services {
            seen[*s] = true;
        }
    }
    let mut services: Vec<String> = wide
        .services
        .iter()
        .zip(&seen)
        .filter(|(_, s)| **s)
        .map(|(x, _)| x.name.clone())
        .collect();
    services.sort();
    services.truncate(1000);
    anyhow::ensure!(
        services.len() == 1000,
        "only {} services have history",
        services.len()
    );
    let coll = support::collector(&db).await?;
    let reading = support::allocator(&coll, "http://127.0.0.1:9", snapshot(false)).await?;
    let snapshotting = support::allocator(&coll, "http://127.0.0.1:9", snapshot(true)).await?;
    let ask = v1::RecommendRequest {
        workload: Some(v1::Workload {
            services: services.clone(),
            ..Default::default()
        }),
        strategy: "percentile".into(),
        params: None,
    };
    let mut read = AllocatorClient::new(reading.channel().await?);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let a = read.recommend(ask.clone()).await?.into_inner();
        times.push(t.elapsed());
        anyhow::ensure!(a.allocations.len() == 2000);
    }
    let read_now = median(times);
    let mut snap = AllocatorClient::new(snapshotting.channel().await?);
    kit::eventually("the snapshot", Duration::from_secs(120), || {
        let mut c = snap.clone();
        let ask = ask.clone();
        async move {
            let a = c.recommend(ask).await.ok()?.into_inner();
            a.allocations[0]
                .explanation
                .as_ref()?
                .detail
                .contains("snapshot")
                .then_some(())
        }
    })
    .await?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        snap.recommend(ask.clone()).await?;
        times.push(t.elapsed());
    }
    let from_snapshot = median(times);
    // `auto` compares its 84 candidates per series from the same snapshot.
    let auto_ask = v1::RecommendRequest {
        strategy: "auto".into(),
        ..ask.clone()
    };
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let a = snap.recommend(auto_ask.clone()).await?.into_inner();
        times.push(t.elapsed());
        anyhow::ensure!(a.allocations.len() == 2000);
    }
    let auto_from_snapshot = median(times);
    headroom_testkit::bench::record(
        "allocator",
        "Recommend auto, 1,000 services (snapshot, no model)",
        ms(auto_from_snapshot),
        "ms",
        Some(("percentile from the snapshot", ms(from_snapshot))),
    );
    println!(
        "Recommend auto (no model served: 84 candidates), 1,000 services x cpu, memory: {:.1} ms from the snapshot ({:.2}x percentile's {:.1} ms)",
        ms(auto_from_snapshot),
        ms(auto_from_snapshot) / ms(from_snapshot),
        ms(from_snapshot)
    );
    // With a model served, the snapshot also holds the model candidates'
    // recent costs; series the model wins take its curves for this mix.
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let model = support::model_before(&db, None, "wide", dir.path()).await?;
    println!(
        "model of 1,100 services trained in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let pred = support::predictor(model).await?;
    let modelled = support::allocator(&coll, &pred.url(), snapshot(true)).await?;
    let mut with_model = AllocatorClient::new(modelled.channel().await?);
    let t = Instant::now();
    kit::eventually(
        "the snapshot with the model",
        Duration::from_secs(1200),
        || {
            let mut c = with_model.clone();
            let ask = auto_ask.clone();
            async move {
                let a = c.recommend(ask).await.ok()?.into_inner();
                let e = a.allocations[0].explanation.as_ref()?;
                (e.detail.contains("snapshot") && !e.detail.contains("not compared")).then_some(())
            }
        },
    )
    .await?;
    println!(
        "snapshot with the model's candidates ready after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    let mut won = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let a = with_model.recommend(auto_ask.clone()).await?.into_inner();
        times.push(t.elapsed());
        anyhow::ensure!(a.allocations.len() == 2000);
        won = a
            .allocations
            .iter()
            .filter(|x| {
                !x.explanation
                    .as_ref()
                    .is_none_or(|e| e.model_version.is_empty())
            })
            .count();
    }
    let auto_with_model = median(times);
    headroom_testkit::bench::record(
        "allocator",
        "Recommend auto, 1,000 services (snapshot, model candidates)",
        ms(auto_with_model),
        "ms",
        Some(("percentile from the snapshot", ms(from_snapshot))),
    );
    println!(
        "Recommend auto with the model's candidates (89), 1,000 services x cpu, memory: {:.1} ms from the snapshot ({:.2}x percentile's {:.1} ms); {won} of 2,000 series won by the model",
        ms(auto_with_model),
        ms(auto_with_model) / ms(from_snapshot),
        ms(from_snapshot)
    );
    modelled.stop().await?;
    pred.stop().await?;
    let floor = health(&snapshotting).await?;
    headroom_testkit::bench::record(
        "allocator",
        "Recommend, 1,000 services (snapshot)",
        ms(from_snapshot),
        "ms",
        Some(("reading the history", ms(read_now))),
    );
    println!(
        "Recommend, 1,000 services x cpu, memory: {:.1} ms from the snapshot, {:.1} ms reading the history ({:.1}x); health check {:.3} ms (snapshot answer = {:.0}x a health check)",
        ms(from_snapshot),
        ms(read_now),
        ms(read_now) / ms(from_snapshot),
        ms(floor),
        ms(from_snapshot) / ms(floor)
    );
    snapshotting.stop().await?;
    reading.stop().await?;
    coll.stop().await?;

    // --- Backtest over 100 held-out tasks --------------------------------
    let db = kit::TestDb::new().await?;
    let sim = Workload::new(&SimOptions {
        seed: 9,
        services: 8,
        tasks: 300,
        interval: Duration::from_secs(20),
        ..SimOptions::default()
    })?;
    sim.write_postgres(&db.pool).await?;
    let split = sim.tasks[200].start;
    let dir = tempfile::tempdir()?;
    let model = support::model_before(&db, Some(split), "bench", dir.path()).await?;
    let coll = support::collector(&db).await?;
    let pred = support::predictor(model).await?;
    let alloc = support::allocator(&coll, &pred.url(), snapshot(false)).await?;
    let mut client = AllocatorClient::new(alloc.channel().await?);
    let split_ts = prost_types::Timestamp {
        seconds: split.timestamp(),
        nanos: 0,
    };
    let t = Instant::now();
    let answer = client
        .backtest(v1::BacktestRequest {
            split: Some(split_ts),
            max_tasks: 100,
            ..Default::default()
        })
        .await?
        .into_inner();
    let backtest = t.elapsed();
    let ids = answer.task_ids.clone();
    let mut exporter = CollectorClient::new(coll.channel().await?);
    let t = Instant::now();
    let mut stream = exporter
        .export_samples(v1::ExportSamplesRequest {
            filter: Some(v1::UsageFilter {
                task_ids: ids,
                resources: vec!["cpu".into(), "memory".into()],
                ..Default::default()
            }),
            chunk_size: 0,
            provisioned: false,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(c) = stream.message().await? {
        n += c.samples.len();
    }
    let read = t.elapsed();
    headroom_testkit::bench::record(
        "allocator",
        &format!("Backtest, {} held-out tasks", answer.task_ids.len()),
        ms(backtest),
        "ms",
        Some(("streaming their samples", ms(read))),
    );
    println!(
        "Backtest, {} held-out tasks ({n} samples), 4 strategies: {:.0} ms; reading those samples {:.0} ms ({:.1}x)",
        answer.task_ids.len(),
        ms(backtest),
        ms(read),
        ms(backtest) / ms(read)
    );
    print!("{}", table(&answer)?);
    // The model-based strategies again, aiming at the violation rate the
    // percentile strategy reached on CPU: slack at an equal violation rate.
    let percentile_cpu = answer
        .rows
        .iter()
        .find(|r| r.strategy == "percentile" && r.resource == "cpu")
        .map_or(0.05, |r| r.violation_rate.max(0.001));
    let matched = client
        .backtest(v1::BacktestRequest {
            split: Some(split_ts),
            max_tasks: 100,
            strategies: vec!["predictive".into(), "plan".into()],
            params: Some(v1::StrategyParams {
                target_violation_rate: Some(percentile_cpu),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "predictive and plan aiming at {:.2} % violations:",
        percentile_cpu * 100.0
    );
    print!("{}", table(&matched)?);
    alloc.stop().await?;
    pred.stop().await?;
    coll.stop().await
}
