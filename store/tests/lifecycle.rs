//! The lifecycle of raw samples against a real PostgreSQL: samples spread
//! over many days land in their day's partition (early and late ones via the
//! default partition, which maintenance drains); retention drops whole
//! partitions and keeps tasks; the admin report lists what is stored.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use headroom_store::{self as store, admin, lifecycle};
use headroom_testkit as kit;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Rows per partition, by partition name.
async fn rows_by_partition(pool: &sqlx::PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT tableoid::regclass::text, count(*) FROM samples GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?)
}

/// 24 hourly samples on each day `from_day..=to_day` around `noon`.
async fn insert_days(
    pool: &sqlx::PgPool,
    noon: DateTime<Utc>,
    days: std::ops::RangeInclusive<i64>,
) -> anyhow::Result<()> {
    for day in days {
        let start = noon - TimeDelta::hours(12) + TimeDelta::days(day);
        sqlx::query(
            "INSERT INTO samples (task_id, service_id, resource_id, value, ts) \
             SELECT 'job', 1, 1, h, $1 + make_interval(hours => h) FROM generate_series(0, 23) h",
        )
        .bind(start)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// A migrated store holding the task `job`.
async fn store_with_job() -> anyhow::Result<kit::TestDb> {
    let db = kit::TestDb::new().await?;
    store::migrate(&db.pool).await?;
    sqlx::query("INSERT INTO tasks (id, start_ts) VALUES ('job', now())")
        .execute(&db.pool)
        .await?;
    Ok(db)
}

#[tokio::test]
async fn samples_land_in_day_partitions_and_retention_drops_whole_days() -> anyhow::Result<()> {
    kit::init_logs();
    let db = store_with_job().await?;
    let now = at("2026-11-28T12:00:00Z");
    // Before any maintenance everything waits in the default partition.
    insert_days(&db.pool, now, -10..=1).await?;
    assert_eq!(
        rows_by_partition(&db.pool).await?,
        [("samples_default".to_string(), 12 * 24)]
    );

    let options = lifecycle::LifecycleOptions {
        raw_retention: Duration::from_secs(8 * 86_400),
        ..Default::default()
    };
    let report = lifecycle::maintain(&db.pool, &options, now).await?;
    // Days 11-20 .. 11-29 are within retention (11-20 ends after the cutoff
    // of 11-20 12:00), plus the days prepared ahead up to 12-01. Days 11-18
    // and 11-19 were already past retention: discarded, not partitioned.
    let partitions = rows_by_partition(&db.pool).await?;
    let want: Vec<(String, i64)> = (20..=29)
        .map(|d| (format!("samples_p202611{d}_0000"), 24))
        .collect();
    assert_eq!(partitions, want);
    assert_eq!(report.drained_rows, 10 * 24);
    assert_eq!(report.created.len(), 12, "{:?}", report.created);
    assert!(
        report
            .created
            .contains(&"samples_p20261201_0000".to_string())
    );

    // A sample far in the future still lands, in the default partition, and
    // the next pass gives it a partition.
    sqlx::query(
        "INSERT INTO samples (task_id, service_id, resource_id, value, ts) \
         VALUES ('job', 1, 1, 1, '2027-01-15T08:00:00Z')",
    )
    .execute(&db.pool)
    .await?;
    let report = lifecycle::maintain(&db.pool, &options, now).await?;
    assert_eq!(report.created, ["samples_p20270115_0000"]);
    assert_eq!(report.drained_rows, 1);

    // Three days later, three more days are past retention.
    let later = now + TimeDelta::days(3);
    let report = lifecycle::maintain(&db.pool, &options, later).await?;
    assert_eq!(
        report.dropped,
        [
            "samples_p20261120_0000",
            "samples_p20261121_0000",
            "samples_p20261122_0000"
        ]
    );
    let oldest: DateTime<Utc> = sqlx::query_scalar("SELECT min(ts) FROM samples")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(oldest, at("2026-11-23T00:00:00Z"));
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&db.pool)
        .await?;
    assert_eq!(tasks, 1, "tasks outlive raw samples");

    let mut out = Vec::new();
    admin::storage(&db.pool, &mut out).await?;
    let text = String::from_utf8(out)?;
    assert!(text.contains("samples_p20261123_0000"), "{text}");
    assert!(text.contains("samples_default"), "{text}");
    assert!(
        text.contains("oldest raw sample: 2026-11-23T00:00:00+00:00"),
        "{text}"
    );

    // Widths that do not tile days are refused with the reason.
    let bad = lifecycle::LifecycleOptions {
        partition_width: Duration::from_secs(1800),
        ..Default::default()
    };
    let e = lifecycle::maintain(&db.pool, &bad, now).await.unwrap_err();
    assert!(e.to_string().contains("partition width"), "{e}");
    Ok(())
}

/// Readers never see a sample vanish while maintenance moves it out of the
/// default partition: the move and the attach hold the parent table
/// exclusively, so a query plans and reads either before or after both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_a_drain_see_every_sample() -> anyhow::Result<()> {
    let db = store_with_job().await?;
    let now = at("2026-11-28T12:00:00Z");
    insert_days(&db.pool, now, -6..=0).await?;
    let want = 7 * 24;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM samples WHERE task_id = $1 AND service_id = $2",
                )
                .bind("job")
                .bind(1)
                .fetch_one(&pool)
                .await?;
                seen.push(n);
            }
            anyhow::Ok(seen)
        }));
    }
    let options = lifecycle::LifecycleOptions {
        raw_retention: Duration::from_secs(30 * 86_400),
        ..Default::default()
    };
    lifecycle::maintain(&db.pool, &options, now).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        let seen = r.await??;
        reads += seen.len();
        assert!(
            seen.iter().all(|n| *n == want),
            "counts seen during the drain: {seen:?}"
        );
    }
    assert!(reads > 0);
    assert!(
        rows_by_partition(&db.pool)
            .await?
            .iter()
            .all(|(p, _)| p != "samples_default"),
        "drained"
    );
    Ok(())
}
