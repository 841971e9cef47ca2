//! The monitor against a real collector, predictor and allocator over
//! simulated history: the frame holds the task's stored samples, the
//! model's quantile curves and the recommendation; the binary writes the
//! chart as PNG and SVG.

#[path = "../../allocator/tests/support/mod.rs"]
mod support;

use headroom_allocator::ServiceOptions;
use headroom_monitor::{Selection, gather};
use headroom_simulator::{SimOptions, Workload};
use headroom_testkit as kit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_usage_against_the_prediction_and_the_allocation() -> anyhow::Result<()> {
    support::init_ort()?;
    let db = kit::TestDb::new().await?;
    let workload = Workload::new(&SimOptions {
        seed: 5,
        services: 3,
        tasks: 8,
        min_duration: std::time::Duration::from_secs(300),
        max_duration: std::time::Duration::from_secs(300),
        interval: std::time::Duration::from_secs(10),
        spacing: std::time::Duration::from_secs(400),
        ..SimOptions::default()
    })?;
    workload.write_postgres(&db.pool).await?;
    let dir = tempfile::tempdir()?;
    let model = support::model_before(&db, None, "monitor", dir.path()).await?;
    let collector = support::collector(&db).await?;
    let predictor = support::predictor(model).await?;
    let allocator =
        support::allocator(&collector, &predictor.url(), ServiceOptions::default()).await?;

    let task = &workload.tasks[7];
    let service = workload.services[task.services[0]].name.clone();
    let sel = Selection {
        service: service.clone(),
        resource: "cpu".into(),
        task: Some(task.id.clone()),
        collector: collector.url(),
        predictor: predictor.url(),
        allocator: allocator.url(),
        strategy: "percentile".into(),
        tls: Default::default(),
    };
    let frame = gather(&sel).await?;
    let stored =
        headroom_store::count_samples(&db.pool, &task.id, Some(&service), Some("cpu")).await?;
    assert_eq!(frame.used.len() as i64, stored);
    assert!(
        frame.used.windows(2).all(|w| w[0].0 < w[1].0),
        "samples in time order"
    );
    assert!(frame.used[0].0 >= 0.0 && frame.used.last().unwrap().0 <= 300.0);
    assert_eq!(frame.predicted.len(), 3, "p50, p90, p99");
    assert_eq!(frame.model_version, "monitor");
    for i in 0..frame.predicted[0].1.len() {
        assert!(frame.predicted[0].1[i].1 <= frame.predicted[2].1[i].1);
    }
    assert!(frame.allocation.is_some_and(|a| a > 0.0));
    assert!(frame.ended && frame.notes.is_empty(), "{:?}", frame.notes);

    // Without a predictor the frame says so and still shows usage.
    let partial = gather(&Selection {
        predictor: "http://127.0.0.1:9".into(),
        ..sel.clone()
    })
    .await?;
    assert_eq!(partial.used.len(), frame.used.len());
    assert!(
        partial.notes.iter().any(|n| n.starts_with("no prediction")),
        "{:?}",
        partial.notes
    );

    for (flag, file) in [("--png", "m.png"), ("--svg", "m.svg")] {
        let path = dir.path().join(file);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-monitor"))
            .args(["--service", &service, "--task", &task.id])
            .args([
                "--collector",
                &collector.url(),
                "--predictor",
                &predictor.url(),
            ])
            .args(["--allocator", &allocator.url()])
            .arg(flag)
            .arg(&path)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::metadata(&path)?.len() > 1000, "{file} written");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-monitor"))
        .args([
            "--service",
            "nobody",
            "--collector",
            &collector.url(),
            "--png",
        ])
        .arg(dir.path().join("x.png"))
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("headroom-monitor: "));
    // The live view without a terminal (stdout a pipe): one line saying
    // what to do, not a panic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-monitor"))
        .args([
            "--service",
            &service,
            "--resource",
            "cpu",
            "--collector",
            &collector.url(),
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked") && err.contains("--png"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    allocator.stop().await?;
    predictor.stop().await?;
    collector.stop().await
}

/// An unreachable collector ends the monitor with one line naming it.
#[test]
fn an_unreachable_collector_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-monitor"))
        .args([
            "--service",
            "api",
            "--collector",
            "http://127.0.0.1:1",
            "--png",
        ])
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("headroom-monitor: ")
            && err.contains("127.0.0.1:1")
            && !err.contains("panicked"),
        "{err}"
    );
}
