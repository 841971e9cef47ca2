//! Instances (replicas) against a real PostgreSQL: a store written before
//! instances existed upgrades in place without losing or changing a row;
//! two replicas of one service at the same ticks are two samples; a
//! replayed sample is a duplicate, a different value under a stored key a
//! conflict.

use futures::TryStreamExt as _;
use headroom_store::{self as store, Batch, Lookups, Row, TaskSeen};
use headroom_testkit as kit;

/// 2026-11-01T00:00:00Z in µs.
const START_US: i64 = 1_793_491_200_000_000;

fn row(service: &str, instance: &str, resource: &'static str, value: f64, i: i64) -> Row {
    Row {
        task_id: "job".into(),
        service: service.into(),
        instance: instance.into(),
        resource,
        value,
        ts_us: START_US + i * 10_000_000,
    }
}

fn batch(rows: Vec<Row>) -> Batch {
    let mut b = Batch::default();
    b.push_usage(
        rows,
        TaskSeen {
            id: "job".into(),
            start_us: START_US,
            end_us: None,
            services: vec!["api".into()],
        },
    );
    b
}

/// Every stored sample as (service, instance, resource, value, ts), sorted.
async fn dump(pool: &store::PgPool) -> anyhow::Result<Vec<(String, String, String, u64, i64)>> {
    let filter = store::resolve_filter(pool, &[], &[], &[], None, None).await?;
    let query = store::export_query(None);
    let (services, resources) = store::names(pool).await?;
    let instances = store::instance_names(pool).await?;
    let mut out: Vec<_> = store::export_rows(pool, &filter, &query)
        .map_ok(|r| {
            (
                services[&r.service_id].clone(),
                instances[&r.instance_id].clone(),
                resources[&r.resource_id].clone(),
                r.value.to_bits(),
                r.ts.timestamp_micros(),
            )
        })
        .try_collect()
        .await?;
    out.sort();
    Ok(out)
}

#[tokio::test]
async fn a_store_from_before_instances_upgrades_without_losing_a_row() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    // The schema as the last release left it (migrations 1 to 4), with
    // samples written the way it wrote them: no instance column.
    store::migrate_up_to(&db.pool, 4).await?;
    db.fixture(
        "INSERT INTO services (id, name) VALUES (1, 'api'), (2, 'db'); \
         INSERT INTO tasks (id, start_ts, services) VALUES ('job', '2026-11-01T00:00:00Z', '{api,db}'); \
         INSERT INTO series SELECT 'job', s, r, '2026-11-01T00:00:00Z', '2026-11-01T01:00:00Z' \
           FROM generate_series(1, 2) s, generate_series(1, 2) r; \
         INSERT INTO samples (task_id, service_id, resource_id, value, ts) \
           SELECT 'job', s, r, s * 1000 + r * 100 + t / 60.0, \
                  timestamptz '2026-11-01T00:00:00Z' + t * interval '1 second' \
           FROM generate_series(1, 2) s, generate_series(1, 2) r, generate_series(0, 3590, 10) t",
    )
    .await?;
    let before = db.scalar("SELECT count(*) FROM samples").await?;
    let checksum = "SELECT sum(value * extract(epoch FROM ts))::bigint FROM samples";
    let before_sum = db.scalar(checksum).await?;
    assert_eq!(before, 2 * 2 * 360);

    store::migrate(&db.pool).await?;
    let after = dump(&db.pool).await?;
    assert_eq!(
        after.len() as i64,
        before,
        "rows lost or added by the upgrade"
    );
    assert_eq!(db.scalar(checksum).await?, before_sum, "values changed");
    assert!(
        after.iter().all(|(_, instance, ..)| instance == "default"),
        "existing rows get the default instance"
    );
    // The upgraded store takes a second replica of the same series.
    let lookups = Lookups::new();
    let report = store::write_batch(
        &db.pool,
        &lookups,
        &batch(vec![row("api", "host-b", "cpu", 1.5, 0)]),
        true,
    )
    .await?;
    assert_eq!(report.inserted, 1);
    let services = store::list_services(&db.pool).await?;
    let api = services.iter().find(|s| s.name == "api").unwrap();
    assert_eq!(api.instances, 2, "default and host-b");
    Ok(())
}

#[tokio::test]
async fn replicas_are_samples_of_their_own_and_conflicts_are_not_duplicates() -> anyhow::Result<()>
{
    let db = kit::TestDb::new().await?;
    store::migrate(&db.pool).await?;
    let lookups = Lookups::new();
    // Two replicas of one service at the same 60 ticks: 100 MiB and 600 MiB.
    let mib = 1024.0 * 1024.0;
    let replicas = |i: i64| {
        vec![
            row("api", "host-a", "memory", 100.0 * mib, i),
            row("api", "host-b", "memory", 600.0 * mib, i),
        ]
    };
    let mut stored = 0;
    for chunk in (0..60).collect::<Vec<_>>().chunks(7) {
        let rows = chunk.iter().flat_map(|i| replicas(*i)).collect();
        let r = store::write_batch(&db.pool, &lookups, &batch(rows), true).await?;
        assert_eq!(
            (r.duplicates, r.conflicts.len()),
            (0, 0),
            "replicas are neither"
        );
        stored += r.inserted;
    }
    assert_eq!(stored, 120);
    assert_eq!(
        store::count_samples(&db.pool, "job", Some("api"), Some("memory")).await?,
        120
    );

    // Statistics pool the replicas; a filter on one instance sees only it.
    let all = store::resolve_filter(
        &db.pool,
        &["api".into()],
        &["memory".into()],
        &[],
        None,
        None,
    )
    .await?;
    let pooled = store::usage_stats(&db.pool, &all).await?;
    assert_eq!(pooled[0].count, 120);
    assert_eq!(pooled[0].max, 600.0 * mib);
    let one = store::with_instances(&db.pool, all.clone(), &["host-a".into()]).await?;
    let alone = store::usage_stats(&db.pool, &one).await?;
    assert_eq!((alone[0].count, alone[0].max), (60, 100.0 * mib));
    let unknown = store::with_instances(&db.pool, all, &["host-z".into()]).await;
    assert!(
        matches!(&unknown, Err(store::Error::NotFound(m)) if m.contains("host-z")),
        "{unknown:?}"
    );

    // An exact replay is a duplicate; another value under a stored key (two
    // agents claiming one replica) is a conflict, and the stored value stays.
    let replay = store::write_batch(&db.pool, &lookups, &batch(replicas(3)), true).await?;
    assert_eq!(
        (replay.inserted, replay.duplicates, replay.conflicts.len()),
        (0, 2, 0)
    );
    let clash = store::write_batch(
        &db.pool,
        &lookups,
        &batch(vec![
            row("api", "host-a", "memory", 999.0, 5),
            row("api", "host-a", "memory", 100.0 * mib, 6),
        ]),
        true,
    )
    .await?;
    assert_eq!((clash.inserted, clash.duplicates), (0, 1));
    assert_eq!(clash.conflicts.len(), 1);
    let c = &clash.conflicts[0];
    assert_eq!(
        (c.instance.as_str(), c.kept, c.refused),
        ("host-a", 100.0 * mib, 999.0)
    );
    // Two values for one key inside one batch: the first is kept, the
    // second reported.
    let inside = store::write_batch(
        &db.pool,
        &lookups,
        &batch(vec![
            row("api", "host-c", "cpu", 1.0, 0),
            row("api", "host-c", "cpu", 2.0, 0),
        ]),
        true,
    )
    .await?;
    assert_eq!(
        (inside.inserted, inside.duplicates, inside.conflicts.len()),
        (1, 0, 1)
    );
    assert_eq!(dump(&db.pool).await?.len(), 121);
    Ok(())
}
