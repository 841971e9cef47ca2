//! The query API over real gRPC, against samples ingested through the real
//! broker: lists, series (raw, downsampled, paged), statistics checked
//! against an independent computation, exports, live streams, bad input,
//! and the admin subcommands.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use headroom_proto::{
    time::from_unix_ms,
    v1::{self, collector_client::CollectorClient},
};
use headroom_testkit as kit;
use tonic::Code;

fn cpu(i: i64) -> f64 {
    ((i * 37) % 101) as f64 / 10.0
}

fn mem(i: i64, service: &str) -> f64 {
    1e6 * ((i % 13) as f64) + if service == "db" { 5e8 } else { 1e8 }
}

/// Exact statistics computed here, independently of PostgreSQL:
/// population standard deviation and linear-interpolated percentiles.
fn stats(values: &[f64]) -> (f64, f64, f64, f64, [f64; 4]) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let pct = |p: f64| {
        let pos = p * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    (
        v[0],
        mean,
        v[v.len() - 1],
        var.sqrt(),
        [pct(0.5), pct(0.9), pct(0.95), pct(0.99)],
    )
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn the_query_api_answers_from_stored_samples_and_refuses_bad_input() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("api", 2).await?;
    let mut expected: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut records = Vec::new();
    for (task, services, ticks) in [
        ("t-a", vec!["api", "db"], 200_i64),
        ("t-b", vec!["api"], 50),
    ] {
        for service in services {
            for i in 0..ticks {
                let (c, m) = (cpu(i), mem(i, service));
                expected
                    .entry((service.into(), "cpu".into()))
                    .or_default()
                    .push(c);
                expected
                    .entry((service.into(), "memory".into()))
                    .or_default()
                    .push(m);
                records.push((
                    service.to_string(),
                    usage(task, service, T0 + i * 1000, &[("cpu", c), ("memory", m)]),
                ));
            }
        }
    }
    produce(&topic, &records, None).await?;
    let server = start(&db.url, ingest_options(&topic)).await?;
    wait_for_rows(&db.pool, "t-a", 800, Duration::from_secs(60)).await?;
    wait_for_rows(&db.pool, "t-b", 100, Duration::from_secs(60)).await?;
    let mut client = CollectorClient::new(server.channel().await?);

    // Lookups and tasks.
    let services: Vec<String> = client
        .list_services(v1::ListServicesRequest {})
        .await?
        .into_inner()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(services, ["api", "db"]);
    let resources = client
        .list_resources(v1::ListResourcesRequest {})
        .await?
        .into_inner()
        .resources;
    // Usage, then pressure and limits.
    assert_eq!(resources.len(), headroom_proto::resource::KNOWN.len());
    assert!(
        resources
            .iter()
            .any(|r| r.name == "oom_kills" && r.unit == "kills")
    );
    assert!(
        resources
            .iter()
            .any(|r| r.name == "cpu" && r.unit == "cores")
    );
    let task = client
        .get_task(v1::GetTaskRequest { id: "t-a".into() })
        .await?
        .into_inner();
    assert_eq!(task.start, Some(from_unix_ms(T0)));
    assert_eq!(task.services, ["api", "db", "worker"]);
    let with_db = client
        .list_tasks(v1::ListTasksRequest {
            service: "db".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(with_db.tasks.len(), 2, "both tasks name db in their mix");
    let page = client
        .list_tasks(v1::ListTasksRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.tasks.len(), 1);
    assert!(!page.next_page_token.is_empty());

    // UsageStats against the independent computation.
    let got = client
        .usage_stats(v1::UsageStatsRequest::default())
        .await?
        .into_inner()
        .stats;
    assert_eq!(got.len(), expected.len());
    for s in &got {
        let values = &expected[&(s.service.clone(), s.resource.clone())];
        let (min, mean, max, sd, p) = stats(values);
        assert_eq!(s.count, values.len() as u64);
        for (name, a, b) in [
            ("min", s.min, min),
            ("mean", s.mean, mean),
            ("max", s.max, max),
            ("stddev", s.stddev, sd),
            ("p50", s.p50, p[0]),
            ("p90", s.p90, p[1]),
            ("p95", s.p95, p[2]),
            ("p99", s.p99, p[3]),
        ] {
            assert!(
                close(a, b),
                "{}/{} {name}: {a} != {b}",
                s.service,
                s.resource
            );
        }
    }
    // Filtered to one task.
    let only_b = client
        .usage_stats(v1::UsageStatsRequest {
            filter: Some(v1::UsageFilter {
                task_ids: vec!["t-b".into()],
                resources: vec!["cpu".into()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].count, 50);

    // Raw series.
    let filter = v1::UsageFilter {
        services: vec!["api".into()],
        resources: vec!["cpu".into()],
        task_ids: vec!["t-a".into()],
        ..Default::default()
    };
    let raw = client
        .query_usage(v1::QueryUsageRequest {
            filter: Some(filter.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(raw.series.len(), 1);
    let points = &raw.series[0].points;
    assert_eq!(points.len(), 200);
    assert!(
        points
            .iter()
            .enumerate()
            .all(|(i, p)| p.value == cpu(i as i64)
                && p.ts == Some(from_unix_ms(T0 + i as i64 * 1000)))
    );

    // Downsampled: max over 10 s steps.
    let stepped = client
        .query_usage(v1::QueryUsageRequest {
            filter: Some(filter.clone()),
            step: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            aggregate: v1::Aggregate::Max as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let points = &stepped.series[0].points;
    assert_eq!(points.len(), 20);
    for (k, p) in points.iter().enumerate() {
        let want = (0..10)
            .map(|j| cpu(k as i64 * 10 + j))
            .fold(f64::MIN, f64::max);
        assert_eq!(p.value, want, "step {k}");
    }
    // Truncation is reported.
    let cut = client
        .query_usage(v1::QueryUsageRequest {
            filter: Some(filter.clone()),
            max_points: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(cut.series[0].truncated);
    assert_eq!(cut.series[0].points.len(), 5);

    // Paging walks every series exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .query_usage(v1::QueryUsageRequest {
                page_size: 4,
                max_points: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        seen.extend(
            page.series
                .into_iter()
                .map(|s| (s.task_id, s.service, s.resource)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen);

    // Export: seconds into the task and the task's mix.
    let mut stream = client
        .export_samples(v1::ExportSamplesRequest {
            filter: Some(v1::UsageFilter {
                task_ids: vec!["t-b".into()],
                ..Default::default()
            }),
            chunk_size: 30,
            provisioned: false,
        })
        .await?
        .into_inner();
    let (mut exported, mut tasks) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.message().await? {
        assert!(chunk.samples.len() <= 30);
        exported.extend(chunk.samples);
        tasks.extend(chunk.tasks);
    }
    assert_eq!(exported.len(), 100);
    assert_eq!(tasks.len(), 1);
    assert!(exported.iter().all(|s| {
        let i = s.seconds_into_task as i64;
        s.seconds_into_task.fract() == 0.0
            && (0..50).contains(&i)
            && (s.resource != "cpu" || s.value == cpu(i))
    }));

    // Bad input.
    let err = client
        .query_usage(v1::QueryUsageRequest {
            filter: Some(v1::UsageFilter {
                services: vec!["nope".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("\"nope\""), "{}", err.message());
    let err = client
        .usage_stats(v1::UsageStatsRequest {
            filter: Some(v1::UsageFilter {
                start: Some(from_unix_ms(T0 + 10_000)),
                end: Some(from_unix_ms(T0)),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .query_usage(v1::QueryUsageRequest {
            step: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            aggregate: v1::Aggregate::Percentile as i32,
            percentile: 0.0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .query_usage(v1::QueryUsageRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .list_tasks(v1::ListTasksRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .get_task(v1::GetTaskRequest { id: "t-zzz".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .export_samples(v1::ExportSamplesRequest {
            filter: Some(v1::UsageFilter {
                task_ids: vec!["t-zzz".into()],
                ..Default::default()
            }),
            chunk_size: 0,
            provisioned: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Live stream: samples stored after subscribing arrive, filtered.
    let mut live = client
        .stream_usage(v1::StreamUsageRequest {
            services: vec!["live".into()],
            resources: vec!["cpu".into()],
            task_ids: vec![],
            instances: vec![],
        })
        .await?
        .into_inner();
    let live_records: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                "live".to_string(),
                usage(
                    "t-live",
                    "live",
                    T0 + i * 1000,
                    &[("cpu", i as f64), ("memory", 1.0)],
                ),
            )
        })
        .collect();
    produce(&topic, &live_records, Some(0)).await?;
    let mut got = Vec::new();
    while got.len() < 5 {
        let sample = tokio::time::timeout(Duration::from_secs(30), live.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("live stream ended"))?;
        assert_eq!(
            (sample.service.as_str(), sample.resource.as_str()),
            ("live", "cpu")
        );
        got.push(sample.value);
    }
    assert_eq!(got, [0.0, 1.0, 2.0, 3.0, 4.0]);

    server.stop().await?;

    // Admin: dump the selection as CSV; reset only with confirmation.
    let mut csv = Vec::new();
    let n = headroom_store::admin::dump(
        &db.pool,
        &headroom_store::admin::DumpSelection {
            tasks: vec!["t-b".into()],
            resources: vec!["cpu".into()],
            ..Default::default()
        },
        &mut csv,
    )
    .await?;
    assert_eq!(n, 50);
    let text = String::from_utf8(csv)?;
    assert_eq!(
        text.lines().next(),
        Some("task_id,service,resource,value,ts,seconds_into_task")
    );
    assert!(
        text.lines().nth(2).unwrap().starts_with("t-b,api,cpu,3.7,"),
        "{text}"
    );
    assert!(headroom_store::admin::reset(&db.pool, false).await.is_err());
    assert_eq!(
        count_samples(&db.pool, "t-a").await,
        800,
        "an unconfirmed reset changes nothing"
    );
    headroom_store::admin::reset(&db.pool, true).await?;
    assert_eq!(count_samples(&db.pool, "t-a").await, 0);
    Ok(())
}
