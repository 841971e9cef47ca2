//! Rollups against a real PostgreSQL: maintained by the write path from
//! exactly the rows stored (a replayed batch is not counted twice); their
//! statistics match the raw samples (count, min, max, mean exactly; the
//! percentiles within the sketch's documented 1 %, measured here on
//! generated data); and once retention has dropped the raw days, the
//! rollups still answer for them and the resolution says so.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use headroom_store::{
    self as store, Batch, Filter, Lookups, Row, TaskSeen, WritePath,
    lifecycle::{self, LifecycleOptions},
    rollup::{self, Resolution},
    sketch::ALPHA,
};
use headroom_testkit as kit;

/// 2027-01-01T00:00:00Z in microseconds.
const START_US: i64 = 1_798_761_600_000_000;
const STEP_US: i64 = 10_000_000;
const DAYS: i64 = 3;

/// A deterministic, skewed load: a daily cycle times a heavy-tailed noise.
fn value(i: i64, service: i64) -> f64 {
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407 + service as u64);
    x ^= x >> 33;
    let u = (x % 1_000_000) as f64 / 1_000_000.0;
    let daily = 1.0 + 0.5 * ((i as f64) * STEP_US as f64 / 86_400e6 * std::f64::consts::TAU).sin();
    if u < 0.05 {
        0.0
    } else {
        daily * (-(1.0 - u).ln()) * (service + 1) as f64
    }
}

fn lower_rank(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

#[tokio::test]
async fn rollups_match_raw_samples_and_outlive_them() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    store::migrate(&db.pool).await?;
    let lookups = Lookups::new();
    let per_series = DAYS * 86_400_000_000 / STEP_US;
    let mut exact: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut batches = Vec::new();
    let mut batch = Batch::default();
    for i in 0..per_series {
        let ts_us = START_US + i * STEP_US;
        let rows = (0..2)
            .map(|s| {
                let v = value(i, s);
                exact[s as usize].push(v);
                Row {
                    task_id: "job".into(),
                    service: format!("svc-{s}"),
                    instance: "host-a".into(),
                    resource: "cpu",
                    value: v,
                    ts_us,
                }
            })
            .collect();
        batch.push_usage(
            rows,
            TaskSeen {
                id: "job".into(),
                start_us: START_US,
                end_us: None,
                services: vec!["svc-0".into(), "svc-1".into()],
            },
        );
        if batch.rows.len() >= 5000 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    batches.push(batch);
    for b in &batches {
        let report = store::write_batch(&db.pool, &lookups, b, true).await?;
        assert_eq!(report.path, WritePath::Copy);
    }
    // A replay (crash before the offset was stored) changes nothing.
    let replay = store::write_batch(&db.pool, &lookups, &batches[3], true).await?;
    assert_eq!((replay.path, replay.inserted), (WritePath::Dedup, 0));

    let all = Filter::default();
    let raw = store::usage_stats(&db.pool, &all).await?;
    let mut worst = 0.0f64;
    for resolution in Resolution::ALL {
        let rolled = rollup::stats(&db.pool, &all, resolution).await?;
        assert_eq!(rolled.len(), 2);
        for ((r, x), values) in rolled.iter().zip(&raw).zip(&exact) {
            assert_eq!((r.count, &r.service), (x.count, &x.service));
            assert_eq!(r.count, per_series);
            assert_eq!((r.min, r.max), (x.min, x.max));
            assert!((r.mean - x.mean).abs() <= 1e-9 * x.mean, "{r:?} vs {x:?}");
            assert!(
                (r.stddev - x.stddev).abs() <= 1e-6 * x.stddev,
                "{r:?} vs {x:?}"
            );
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for (q, got) in [0.5, 0.9, 0.95, 0.99].iter().zip(&r.percentiles) {
                let want = lower_rank(&sorted, *q);
                let error = (got - want).abs() / want;
                worst = worst.max(error);
                assert!(error <= ALPHA, "p{q}: {got} vs exact {want}");
            }
        }
    }
    println!(
        "largest relative percentile error from rollups: {:.4} % (bound {} %)",
        worst * 100.0,
        ALPHA * 100.0
    );

    // Hourly points from the rollups: the mean of each hour, exactly.
    let key = store::list_series(&db.pool, &all, None, 10)
        .await?
        .remove(0);
    let hours = rollup::points(
        &db.pool,
        &key,
        &all,
        3_600_000_000,
        store::StepAggregate::Mean,
        Resolution::Hour,
        1000,
    )
    .await?;
    assert_eq!(hours.len() as i64, DAYS * 24);
    let first_hour: f64 = exact[0][..360].iter().sum::<f64>() / 360.0;
    assert!((hours[0].1 - first_hour).abs() <= 1e-9 * first_hour);

    // A day of both series is 17,280 raw samples: raw while the limit
    // allows that many, per-minute rollups above it.
    let day = Filter {
        start: DateTime::from_timestamp_micros(START_US),
        end: DateTime::from_timestamp_micros(START_US + 86_400_000_000),
        ..Default::default()
    };
    for (limit, want) in [
        (0, None),
        (17_280, None),
        (17_279, Some(Resolution::Minute)),
        (100, Some(Resolution::Minute)),
    ] {
        let got = rollup::choose_for_stats(&db.pool, &day, limit).await?;
        assert_eq!(got, want, "raw limit {limit}");
    }

    // Retention: 9 days after the data the raw days are gone...
    let end = DateTime::<Utc>::from_timestamp_micros(START_US + DAYS * 86_400_000_000).unwrap();
    let options = LifecycleOptions {
        raw_retention: Duration::from_secs(8 * 86_400),
        ..Default::default()
    };
    lifecycle::maintain(&db.pool, &options, end).await?; // partitions the data
    let report = lifecycle::maintain(&db.pool, &options, end + TimeDelta::days(9)).await?;
    // The three days of data, and the empty day prepared after them.
    assert_eq!(
        report.dropped,
        [
            "samples_p20270101_0000",
            "samples_p20270102_0000",
            "samples_p20270103_0000",
            "samples_p20270104_0000"
        ]
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(left, 0);
    // ...and the rollups answer for them, saying so.
    let window = Filter {
        start: DateTime::from_timestamp_micros(START_US),
        end: Some(end),
        ..Default::default()
    };
    assert_eq!(
        rollup::choose_for_stats(&db.pool, &window, 0).await?,
        Some(Resolution::Minute)
    );
    assert_eq!(
        rollup::choose_for_stats(&db.pool, &all, 0).await?,
        Some(Resolution::Minute)
    );
    let after = rollup::stats(&db.pool, &window, Resolution::Minute).await?;
    assert_eq!(after[0].count, per_series);
    // Training exports of the old task come from the per-minute rollups:
    // one row per series and minute, the minute's mean.
    let task = Filter {
        task_ids: Some(vec!["job".into()]),
        ..Default::default()
    };
    let resolution = rollup::choose_for_export(&db.pool, &task).await?;
    assert_eq!(resolution, Some(Resolution::Minute));
    let query = store::export_query(resolution);
    let exported: Vec<_> = store::export_rows(&db.pool, &task, &query)
        .try_collect()
        .await?;
    assert_eq!(exported.len() as i64, 2 * DAYS * 1440);
    let first_minute: f64 = exact[0][..6].iter().sum::<f64>() / 6.0;
    assert!((exported[0].value - first_minute).abs() <= 1e-9 * first_minute);
    Ok(())
}
