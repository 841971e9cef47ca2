//! Long-window queries on rolled-up history: 30 simulated days of hourly
//! rollups for 100 services x 6 resources, the last 2 days also as
//! per-minute rollups and as raw samples (at a 30 s interval, to fit a
//! 2-core machine), then `UsageStats` over the 30 days and `QueryUsage` at a
//! 1-hour step through the real gRPC API. The baseline, in the same run, is
//! `UsageStats` of the same service over the 2 raw days (what the raw table
//! alone could answer). Reports table sizes on disk.
//!
//! `cargo bench -p headroom-collector --bench lifecycle` (needs the stack).

use std::{collections::HashMap, time::Instant};

use chrono::{DateTime, TimeDelta, Utc};
use headroom_collector::CollectorConfig;
use headroom_proto::v1::{self, collector_client::CollectorClient};
use headroom_serving::grpc::GrpcOptions;
use headroom_store::{
    self as store, admin,
    lifecycle::LifecycleOptions,
    rollup::{self, Aggregate, Resolution},
};
use headroom_testkit as kit;

const SERVICES: i32 = 100;
const RESOURCES: i32 = 6;
const DAYS: i64 = 30;
const RAW_DAYS: i64 = 2;
const RAW_STEP_S: i64 = 30;

fn level(service: i32, resource: i32, t: i64) -> f64 {
    let base = f64::from(service % 17 + 1) * f64::from(resource + 1);
    let daily = 1.0 + 0.4 * ((t as f64) / 86_400.0 * std::f64::consts::TAU).sin();
    let jitter = ((t / 60 * 7919 + i64::from(service) * 31) % 1000) as f64 / 1000.0;
    base * daily * (0.5 + jitter)
}

/// Writes buckets of `resolution` over `[from, to)` for every series, each
/// bucket's aggregate built from one value per minute.
async fn fill_rollups(
    pool: &store::PgPool,
    resolution: Resolution,
    from: i64,
    to: i64,
) -> anyhow::Result<u64> {
    let width = resolution.seconds();
    let mut rows = 0u64;
    for service in 1..=SERVICES {
        let mut buckets: HashMap<rollup::Key, Aggregate> = HashMap::new();
        for resource in 1..=RESOURCES {
            for bucket in (from..to).step_by(width as usize) {
                let agg = buckets
                    .entry(("history".into(), service, resource, bucket))
                    .or_default();
                for minute in (bucket..bucket + width).step_by(60) {
                    agg.add(level(service, resource, minute));
                }
            }
        }
        rows += buckets.len() as u64;
        rollup::write_buckets(pool, resolution, &buckets).await?;
    }
    Ok(rows)
}

/// Median time of `runs` UsageStats calls, in milliseconds, each answer
/// checked for its resolution and number of (service, resource) pairs.
async fn stats_ms(
    client: &CollectorClient<tonic::transport::Channel>,
    filter: v1::UsageFilter,
    runs: usize,
    resolution: v1::Resolution,
    pairs: usize,
) -> anyhow::Result<f64> {
    median_ms(runs, || {
        let (mut c, f) = (client.clone(), filter.clone());
        async move {
            let r = c
                .usage_stats(v1::UsageStatsRequest { filter: Some(f) })
                .await?
                .into_inner();
            anyhow::ensure!(r.resolution == resolution as i32);
            anyhow::ensure!(r.stats.len() == pairs);
            Ok(())
        }
    })
    .await
}

/// Median of `runs` timings of `f`, in milliseconds.
async fn median_ms<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[runs / 2])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    store::migrate(&db.pool).await?;
    let end = Utc::now().timestamp() / 86_400 * 86_400;
    let start = end - DAYS * 86_400;
    let raw_start = end - RAW_DAYS * 86_400;
    let started = Instant::now();
    db.fixture(&format!(
        "INSERT INTO services (id, name) SELECT g, 'svc-' || g FROM generate_series(1, {SERVICES}) g; \
         INSERT INTO tasks (id, start_ts) VALUES ('history', to_timestamp({start})); \
         INSERT INTO series SELECT 'history', s, r, to_timestamp({start}), to_timestamp({last}) \
         FROM generate_series(1, {SERVICES}) s, generate_series(1, {RESOURCES}) r",
        last = end - 1
    ))
    .await?;
    let hours = fill_rollups(&db.pool, Resolution::Hour, start, end).await?;
    let minutes = fill_rollups(&db.pool, Resolution::Minute, raw_start, end).await?;
    // Raw samples for the last two days, in their day partitions.
    let options = LifecycleOptions {
        raw_retention: std::time::Duration::from_secs(RAW_DAYS as u64 * 86_400),
        ..Default::default()
    };
    let now = DateTime::<Utc>::from_timestamp(end - 1, 0).unwrap_or_default();
    store::lifecycle::maintain(&db.pool, &options, now - TimeDelta::days(1)).await?;
    let raw: u64 = db
        .fixture(&format!(
            "INSERT INTO samples (task_id, service_id, resource_id, value, ts) \
             SELECT 'history', s, r, (s % 17 + 1) * r * (1 + 0.4 * sin(t / 86400.0 * 2 * pi())), to_timestamp(t) \
             FROM generate_series(1, {SERVICES}) s, generate_series(1, {RESOURCES}) r, \
             generate_series({raw_start}::int8, {end}::int8 - 1, {RAW_STEP_S}::int8) t"
        ))
        .await?;
    // Retention at the end of the last day: older raw days are gone.
    store::lifecycle::maintain(&db.pool, &options, now).await?;
    db.fixture("ANALYZE").await?;
    println!(
        "generated {hours} hourly buckets, {minutes} minute buckets, {raw} raw samples in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let config = CollectorConfig {
        database_url: db.url.clone(),
        max_connections: 4,
        ingest: None,
        lifecycle: options,
        grpc: GrpcOptions::default(),
    };
    let server = kit::spawn_server(move |l, s| headroom_collector::run(l, s, config)).await?;
    let client = CollectorClient::new(server.channel().await?);
    let ts = |t: i64| {
        Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        })
    };
    let filter = |services: Vec<String>, from: i64| v1::UsageFilter {
        services,
        start: ts(from),
        end: ts(end),
        ..Default::default()
    };
    let one = vec!["svc-7".to_string()];

    let c = client;
    let series = RESOURCES as usize;
    let raw_2d = stats_ms(
        &c,
        filter(one.clone(), raw_start),
        7,
        v1::Resolution::Raw,
        series,
    )
    .await?;
    let stats_30d = stats_ms(
        &c,
        filter(one.clone(), start),
        7,
        v1::Resolution::Hour,
        series,
    )
    .await?;
    let stats_all_30d = stats_ms(
        &c,
        filter(Vec::new(), start),
        3,
        v1::Resolution::Hour,
        series * SERVICES as usize,
    )
    .await?;
    let f = filter(one.clone(), start);
    let query_1h = median_ms(7, || {
        let (mut c, f) = (c.clone(), f.clone());
        async move {
            let r = c
                .query_usage(v1::QueryUsageRequest {
                    filter: Some(f),
                    step: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::ensure!(r.resolution == v1::Resolution::Hour as i32);
            anyhow::ensure!(r.series.len() == RESOURCES as usize);
            anyhow::ensure!(r.series[0].points.len() == (DAYS * 24) as usize);
            Ok(())
        }
    })
    .await?;
    drop(c);
    server.stop().await?;

    println!();
    println!("| query (median, through gRPC) | ms | vs raw 2-day baseline |");
    println!("| --- | ---: | ---: |");
    println!("| UsageStats, 1 service, 2 days raw (baseline) | {raw_2d:.1} | 1.00 |");
    println!(
        "| UsageStats, 1 service, 30 days (hour rollups) | {stats_30d:.1} | {:.2} |",
        stats_30d / raw_2d
    );
    println!(
        "| QueryUsage, 1 service (6 series), 30 days at 1 h | {query_1h:.1} | {:.2} |",
        query_1h / raw_2d
    );
    println!(
        "| UsageStats, all 100 services, 30 days (hour rollups) | {stats_all_30d:.1} | {:.2} |",
        stats_all_30d / raw_2d
    );
    println!("goal: UsageStats over 30 days and QueryUsage at 1 h under 100 ms");
    println!();
    let mut out = Vec::new();
    admin::storage(&db.pool, &mut out).await?;
    println!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
