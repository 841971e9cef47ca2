//! The trace importers against a real PostgreSQL, on small files written
//! here in the public formats: values converted as documented, containers
//! as instances of their app unit, tasks and mixes formed, provisioned
//! allocations stored, malformed and out-of-range rows counted with their
//! line, and an import of nothing but bad rows refused.

use std::io::Write as _;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use headroom_collector::import::{self, AlibabaOptions, BitbrainsOptions};
use headroom_store as store;
use headroom_testkit as kit;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The stored series of `service`/`res` (`provisioned`: what was
/// allocated) as (task, value) in time order, read through the store.
async fn series_at(
    pool: &store::PgPool,
    provisioned: bool,
    service: &str,
    res: &str,
) -> Vec<(String, f64, DateTime<Utc>)> {
    let filter = store::resolve_filter(pool, &[service.into()], &[res.into()], &[], None, None)
        .await
        .unwrap();
    let query = if provisioned {
        store::export_provisioned_query()
    } else {
        store::export_query(None)
    };
    let mut rows: Vec<store::ExportRow> = store::export_rows(pool, &filter, &query)
        .try_collect()
        .await
        .unwrap();
    rows.sort_by_key(|r| r.ts);
    rows.into_iter()
        .map(|r| (r.task_id, r.value, r.ts))
        .collect()
}

async fn series(pool: &store::PgPool, table: &str, service: &str, res: &str) -> Vec<(String, f64)> {
    series_at(pool, table == "provisioned", service, res)
        .await
        .into_iter()
        .map(|(t, v, _)| (t, v))
        .collect()
}

#[tokio::test]
async fn alibaba_containers_become_app_units_on_machine_windows() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    let meta = dir.path().join("container_meta.csv");
    let usage = dir.path().join("container_usage.csv");
    // c_1 and c_2: app_1 on m_1 (2 cores, 4 units each); c_3: app_2 on m_1;
    // c_4 has a broken request.
    std::fs::write(
        &meta,
        "c_1,m_1,0,app_1,started,200,400,4\n\
         c_2,m_1,0,app_1,started,200,400,4\n\
         c_3,m_1,0,app_2,started,100,100,2\n\
         c_4,m_2,0,app_3,started,x,100,2\n",
    )?;
    let mut u = std::fs::File::create(&usage)?;
    for ts in [0, 10, 3600, 3610] {
        writeln!(u, "c_1,m_1,{ts},50,25,,,,1000,2000,1")?;
        writeln!(u, "c_2,m_1,{ts},100,50,,,,,,1")?;
        if ts < 3600 {
            writeln!(u, "c_3,m_1,{ts},10,10,,,,,,1")?;
        }
    }
    writeln!(u, "c_9,m_1,0,10,10,,,,,,1")?; // unknown container
    writeln!(u, "c_1,m_1,20,10")?; // too few fields
    writeln!(u, "c_1,m_1,30,10,250,,,,,,1")?; // memory above 100 %
    writeln!(u, "c_1,m_1,40,101,10,,,,,,1")?; // a sentinel above 100 %
    writeln!(u, "c_1,m_1,50,-1,10,,,,,,1")?; // and below 0
    drop(u);
    let report = import::alibaba(
        &db.pool,
        &AlibabaOptions {
            meta,
            usage,
            window: std::time::Duration::from_secs(3600),
            memory_unit: 1e9,
            start: Some(at("2026-11-20T00:00:00Z")),
        },
    )
    .await?;
    assert_eq!(report.malformed, 6, "{}", report.summary());
    assert_eq!(report.out_of_range, 3, "{}", report.summary());
    assert!(
        report.summary().contains("3 utilisations outside [0, 100]"),
        "{}",
        report.summary()
    );
    assert!(
        report.examples[0].contains("cpu_request"),
        "{:?}",
        report.examples
    );
    assert!(
        report.examples.iter().any(|e| e.contains("c_9")),
        "{:?}",
        report.examples
    );
    assert_eq!(report.tasks, 2);

    // app_1's containers are its two instances: c_1 at 0.5 × 2 cores and
    // 0.25 × 4e9 bytes, c_2 at 1.0 × 2 cores and 0.5 × 4e9 bytes.
    let cpu = series(&db.pool, "samples", "app_1", "cpu").await;
    assert_eq!(cpu.len(), 8, "{cpu:?}");
    let mut values: Vec<f64> = cpu.iter().map(|(_, v)| *v).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
    assert_eq!(cpu[0].0, "alibaba-m_1-20261120T000000Z-1h-0");
    assert_eq!(cpu[7].0, "alibaba-m_1-20261120T000000Z-1h-1");
    let mem = series(&db.pool, "samples", "app_1", "memory").await;
    assert!(
        mem.iter()
            .all(|(_, v)| (v - 1e9).abs() < 1.0 || (v - 2e9).abs() < 1.0),
        "{mem:?}"
    );
    let net = series(&db.pool, "samples", "app_1", "net_rx").await;
    assert_eq!(net.len(), 4, "only c_1 reports network");
    let instances = store::list_services(&db.pool).await?;
    let app_1 = instances.iter().find(|s| s.name == "app_1").unwrap();
    assert_eq!(app_1.instances, 2, "one instance per container");
    // What one container was given, once per task (a step).
    let given = series(&db.pool, "provisioned", "app_1", "cpu").await;
    assert_eq!(given.len(), 2, "{given:?}");
    assert!(
        given.iter().all(|(_, v)| (v - 2.0).abs() < 1e-9),
        "{given:?}"
    );
    let given = series(&db.pool, "provisioned", "app_2", "memory").await;
    assert!(
        given.iter().all(|(_, v)| (v - 2e9).abs() < 1.0),
        "{given:?}"
    );
    // A file of nothing but bad rows is an error, not an empty success.
    let bad = dir.path().join("bad_usage.csv");
    std::fs::write(&bad, "c_1,m_1,0,101,10,,,,,,1\nc_1,m_1\n")?;
    let e = import::alibaba(
        &db.pool,
        &AlibabaOptions {
            meta: dir.path().join("container_meta.csv"),
            usage: bad,
            window: std::time::Duration::from_secs(3600),
            memory_unit: 1e9,
            start: Some(at("2026-11-20T00:00:00Z")),
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("every one of the 2 usage rows is malformed"),
        "{e}"
    );

    // Mixes: app_2 ran in the first hour only.
    let mut mixes: Vec<(String, Vec<String>)> =
        store::list_tasks(&db.pool, None, None, None, 0, 100)
            .await?
            .into_iter()
            .map(|t| (t.id, t.services))
            .collect();
    mixes.sort();
    assert_eq!(
        mixes,
        [
            (
                "alibaba-m_1-20261120T000000Z-1h-0".into(),
                vec!["app_1".into(), "app_2".into()]
            ),
            (
                "alibaba-m_1-20261120T000000Z-1h-1".into(),
                vec!["app_1".into()]
            ),
        ]
    );
    Ok(())
}

const HEADER: &str = "Timestamp [ms];\tCPU cores;\tCPU capacity provisioned [MHZ];\tCPU usage [MHZ];\tCPU usage [%];\tMemory capacity provisioned [KB];\tMemory usage [KB];\tDisk read throughput [KB/s];\tDisk write throughput [KB/s];\tNetwork received throughput [KB/s];\tNetwork transmitted throughput [KB/s]";

#[tokio::test]
async fn bitbrains_vms_are_read_in_either_time_unit() -> anyhow::Result<()> {
    let db = kit::TestDb::new().await?;
    let dir = tempfile::tempdir()?;
    // VM 1 in seconds (as published), VM 2 in milliseconds; 300 s apart.
    let mut one = format!("{HEADER}\n");
    let mut two = format!("{HEADER}\n");
    for i in 0..4 {
        let t: i64 = 1_376_314_846 + i * 300;
        one.push_str(&format!(
            "{t};\t4;\t10400;\t1300;\t12.5;\t8388608;\t2097152;\t1;\t2;\t3;\t4\n"
        ));
        two.push_str(&format!(
            "{};\t2;\t5200;\t5200;\t100;\t1048576;\t1048576;\t0;\t0;\t0;\t0\n",
            t * 1000
        ));
    }
    one.push_str("1376316046;\t4;\tNaNx;\t1;\t1;\t1;\t1;\t1;\t1;\t1;\t1\n");
    std::fs::write(dir.path().join("1.csv"), one)?;
    std::fs::write(dir.path().join("2.csv"), two)?;
    let report = import::bitbrains(
        &db.pool,
        &BitbrainsOptions {
            paths: vec![dir.path().to_path_buf()],
            window: std::time::Duration::from_secs(86_400),
            start: Some(at("2026-11-20T00:00:00Z")),
        },
    )
    .await?;
    assert_eq!(report.malformed, 1, "{}", report.summary());
    assert_eq!((report.services, report.tasks), (2, 1));
    // A trace reaching back past the raw retention is warned about, with
    // the cutoff and what to do; one inside it is not.
    let week = std::time::Duration::from_secs(8 * 86_400);
    let warning = report
        .retention_warning(week, at("2026-11-28T00:00:01Z"))
        .context("a warning")?;
    assert!(
        warning.contains("starts at 2026-11-20T00:00:00Z")
            && warning.contains("cutoff 2026-11-20T00:00:01Z")
            && warning.contains("--start"),
        "{warning}"
    );
    assert_eq!(
        report.retention_warning(week, at("2026-11-27T00:00:00Z")),
        None
    );
    // A trace longer than the retention: no --start can keep it whole.
    let long = import::ImportReport {
        span_us: Some((
            at("2026-11-01T00:00:00Z").timestamp_micros(),
            at("2026-11-30T00:00:00Z").timestamp_micros(),
        )),
        ..Default::default()
    };
    let warning = long
        .retention_warning(week, at("2026-11-30T00:00:00Z"))
        .context("a warning")?;
    assert!(
        warning.contains("spans 29 d, longer than the raw retention")
            && warning.contains("(8 d back)"),
        "{warning}"
    );
    // 1300 MHz on cores of 10400 / 4 = 2600 MHz: half a core.
    let cpu = series(&db.pool, "samples", "vm-1", "cpu").await;
    assert_eq!(cpu.len(), 4);
    assert!(cpu.iter().all(|(_, v)| (v - 0.5).abs() < 1e-9), "{cpu:?}");
    let cpu = series(&db.pool, "samples", "vm-2", "cpu").await;
    assert!(cpu.iter().all(|(_, v)| (v - 2.0).abs() < 1e-9), "{cpu:?}");
    let mem = series(&db.pool, "samples", "vm-1", "memory").await;
    assert!(mem.iter().all(|(_, v)| (v - 2147483648.0).abs() < 1.0));
    let rd = series(&db.pool, "samples", "vm-1", "disk_read").await;
    assert!(rd.iter().all(|(_, v)| (v - 1024.0).abs() < 1e-9));
    // Both files' samples line up at the same instants (ms read as ms).
    let mut spans: Vec<(String, i64)> = Vec::new();
    for vm in ["vm-1", "vm-2"] {
        let times: Vec<DateTime<Utc>> = series_at(&db.pool, false, vm, "cpu")
            .await
            .into_iter()
            .map(|(_, _, ts)| ts)
            .collect();
        let span = times
            .last()
            .zip(times.first())
            .map(|(l, f)| (*l - *f).num_seconds());
        spans.push((vm.into(), span.unwrap_or_default()));
    }
    assert_eq!(spans, [("vm-1".into(), 900), ("vm-2".into(), 900)]);
    let given = series(&db.pool, "provisioned", "vm-1", "memory").await;
    assert!(given.iter().all(|(_, v)| (v - 8589934592.0).abs() < 1.0));
    assert!(
        cpu.iter()
            .all(|(t, _)| t == "bitbrains-20261120T000000Z-1day-0"),
        "{cpu:?}"
    );

    // The same files at the same start again: the same task, nothing new.
    // At another start: a task of its own, not merged into the first.
    for (start, tasks) in [("2026-11-20T00:00:00Z", 1), ("2026-11-25T00:00:00Z", 2)] {
        let again = import::bitbrains(
            &db.pool,
            &BitbrainsOptions {
                paths: vec![dir.path().to_path_buf()],
                window: std::time::Duration::from_secs(86_400),
                start: Some(at(start)),
            },
        )
        .await?;
        // Run again, every sample is named as already stored.
        let summary = again.summary();
        assert_eq!(
            (again.samples == 0, again.duplicates > 0, tasks == 1),
            (tasks == 1, tasks == 1, tasks == 1),
            "{summary}"
        );
        assert_eq!(
            summary.contains("already stored with the same value"),
            tasks == 1,
            "{summary}"
        );
        let cpu = series(&db.pool, "samples", "vm-1", "cpu").await;
        assert_eq!(cpu.len(), 4 * tasks, "after an import at {start}: {cpu:?}");
        let names: std::collections::BTreeSet<&str> = cpu.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names.len(), tasks, "{names:?}");
    }

    // Without --start the trace would be placed at "now" under new tasks,
    // every sample stored a second time: refused, naming the placement to
    // import into again, and nothing is stored.
    let e = import::bitbrains(
        &db.pool,
        &BitbrainsOptions {
            paths: vec![dir.path().to_path_buf()],
            window: std::time::Duration::from_secs(86_400),
            start: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("imported before")
            && e.to_string().contains("--start 2026-11-25T00:00:00Z")
            && e.to_string().contains("newest of 2 placements"),
        "{e}"
    );
    assert_eq!(series(&db.pool, "samples", "vm-1", "cpu").await.len(), 8);

    // Two imports of 10-minute windows placed one window apart: their
    // windows coincide in time, but each import keeps tasks of its own, so
    // no task's series interleaves the two traces.
    for start in ["2026-11-26T00:00:00Z", "2026-11-26T00:10:00Z"] {
        import::bitbrains(
            &db.pool,
            &BitbrainsOptions {
                paths: vec![dir.path().join("1.csv")],
                window: std::time::Duration::from_secs(600),
                start: Some(at(start)),
            },
        )
        .await?;
    }
    let placed: Vec<(String, f64)> = series(&db.pool, "samples", "vm-1", "cpu")
        .await
        .into_iter()
        .filter(|(t, _)| t.contains("-10m-"))
        .collect();
    let mut per_task: std::collections::BTreeMap<&str, usize> = Default::default();
    for (t, _) in &placed {
        *per_task.entry(t.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_task.into_iter().collect::<Vec<_>>(),
        [
            ("bitbrains-20261126T000000Z-10m-0", 2),
            ("bitbrains-20261126T000000Z-10m-1", 2),
            ("bitbrains-20261126T001000Z-10m-0", 2),
            ("bitbrains-20261126T001000Z-10m-1", 2),
        ]
    );

    // Placements and windows the collector could not keep are refused
    // before anything is stored; so are two files of one name.
    let refused = |paths: Vec<std::path::PathBuf>, start: Option<DateTime<Utc>>, window: u64| {
        let pool = db.pool.clone();
        async move {
            import::bitbrains(
                &pool,
                &BitbrainsOptions {
                    paths,
                    window: std::time::Duration::from_secs(window),
                    start,
                },
            )
            .await
        }
    };
    let one = vec![dir.path().join("1.csv")];
    let e = refused(
        one.clone(),
        Some(Utc::now() + chrono::Duration::days(1)),
        86_400,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("in the future"), "{e}");
    let e = refused(one.clone(), Some(at("1990-01-01T00:00:00Z")), 86_400)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("before 2000-01-01"), "{e}");
    let e = refused(one.clone(), None, 0).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("--window 0s is shorter than a second"),
        "{e}"
    );
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    std::fs::copy(dir.path().join("1.csv"), other.join("1.csv"))?;
    let e = refused(
        vec![dir.path().join("1.csv"), other.join("1.csv")],
        None,
        86_400,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("would both be service vm-1"), "{e}");

    // A file without the header is refused with the reason.
    std::fs::write(dir.path().join("3.csv"), "1;2;3\n")?;
    let e = import::bitbrains(
        &db.pool,
        &BitbrainsOptions {
            paths: vec![dir.path().join("3.csv")],
            window: std::time::Duration::from_secs(86_400),
            start: None,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("GWA-T-12 header"), "{e}");
    Ok(())
}
