//! Does the recommender keep its promise? On real VMs and on simulated
//! tasks with interference, each in a fresh database:
//!
//! 1. import the data (`headroom-collector import bitbrains`, the real
//!    CLI) or simulate it;
//! 2. train with `headroom-train train --end SPLIT`, SPLIT at 75 % of the
//!    span, so the model never sees the held-out tasks;
//! 3. `Backtest` the tasks after the split with every strategy and the
//!    standard sweep (targets 0.1–5 %, percentiles × margins, auto's
//!    weights, vpa), printing the table and the frontier, and writing the
//!    frontier as CSV and one PNG per resource under `$HEADROOM_BENCH_OUT`
//!    (default `bench-results/`);
//! 4. say, per model-based strategy, resource and target (0.5 %, 1 %, 2 %),
//!    whether the measured violation rate is within [0.5×, 1.5×] of the
//!    target, and compare `auto` and `vpa` with `percentile`.
//!
//! Real data: `$HEADROOM_REAL_DATA` (default `../shared/data` beside the
//! repository), one data set per directory holding Bitbrains `*.csv`
//! files. `$HEADROOM_PROMISE_ONLY` (comma-separated: directory names and
//! `simulated`) runs only those. `cargo bench -p headroom-allocator --bench promise` (needs the
//! local stack and release binaries: `scripts/bench promise`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use headroom_allocator::{ServiceOptions, backtest::BacktestReport, render};
use headroom_proto::v1::{self, allocator_client::AllocatorClient};
use headroom_simulator::{SimOptions, Workload};
use headroom_testkit as kit;

/// Targets the promise is checked at.
const TARGETS: [f64; 3] = [0.005, 0.01, 0.02];

/// One data set's backtest: where its split was, what it answered.
struct Run {
    name: String,
    report: BacktestReport,
}

async fn import(db: &kit::TestDb, dir: &Path) -> anyhow::Result<()> {
    let bin = kit::workspace_binary("headroom-collector")?;
    let out = tokio::process::Command::new(bin)
        .args(["import", "bitbrains", "--database-url", &db.url])
        .arg(dir)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "import of {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// First and last task start in `db`.
async fn span(db: &kit::TestDb) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let first = db
        .scalar("SELECT EXTRACT(EPOCH FROM min(start_ts))::bigint FROM tasks")
        .await?;
    let last = db
        .scalar("SELECT EXTRACT(EPOCH FROM max(coalesce(end_ts, start_ts)))::bigint FROM tasks")
        .await?;
    let t = |s| DateTime::from_timestamp(s, 0).unwrap_or_default();
    Ok((t(first), t(last)))
}

async fn backtest(
    name: &str,
    db: &kit::TestDb,
    split: DateTime<Utc>,
    out: &Path,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let model = support::model_before(db, Some(split), name, dir.path()).await?;
    println!(
        "{name}: trained before {split} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let coll = support::collector(db).await?;
    let pred = support::predictor(model).await?;
    // A backtest of 60 VMs with the whole sweep outlasts the default 30 s
    // request timeout (as `--request-timeout` would be raised by hand).
    let alloc = support::allocator_with(
        &coll,
        &pred.url(),
        ServiceOptions::default(),
        headroom_serving::grpc::GrpcOptions {
            request_timeout: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await?;
    let mut client = AllocatorClient::new(alloc.channel().await?);
    let t = Instant::now();
    let answer = client
        .backtest(v1::BacktestRequest {
            split: Some(prost_types::Timestamp {
                seconds: split.timestamp(),
                nanos: 0,
            }),
            max_tasks: 1000,
            sweep: Some(v1::Sweep::default()),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "{name}: backtest with the sweep in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let report = headroom_allocator::grpc::backtest::report(answer)?;
    std::fs::write(
        out.join(format!("frontier-{name}.csv")),
        render::frontier_csv(&report)?,
    )?;
    for resource in ["cpu", "memory"] {
        let png = out.join(format!("frontier-{name}-{resource}.png"));
        render::frontier_chart(&png, &report, resource)?;
        println!("{name}: frontier chart {}", png.display());
    }
    alloc.stop().await?;
    pred.stop().await?;
    coll.stop().await?;
    Ok(Run {
        name: name.to_string(),
        report,
    })
}

/// The promise, read off one run.
fn verdicts(run: &Run) {
    let r = &run.report;
    println!("== {}: {} held-out tasks", run.name, r.task_ids.len());
    print!("{}", render::table(r));
    let point = |strategy: &str, setting: &str, resource: &str| {
        r.frontier.iter().find(|p| {
            p.strategy.name() == strategy && p.setting == setting && p.resource == resource
        })
    };
    for strategy in ["predictive", "plan"] {
        for resource in ["cpu", "memory"] {
            for target in TARGETS {
                let setting = format!("target {:.1} %", target * 100.0);
                if let Some(p) = point(strategy, &setting, resource) {
                    let ratio = p.violation_rate / target;
                    println!(
                        "{}: {strategy} {resource} target {:.1} %: violations {:.2} % ({ratio:.2}x, {:.0} % fell back) {}",
                        run.name,
                        target * 100.0,
                        p.violation_rate * 100.0,
                        p.fallback_share * 100.0,
                        if (0.5..=1.5).contains(&ratio) {
                            "within [0.5x, 1.5x]"
                        } else {
                            "OUTSIDE [0.5x, 1.5x]"
                        }
                    );
                }
            }
        }
        if let (Some(p), Some(q)) = (
            point(strategy, "target 0.1 %", "memory"),
            r.rows
                .iter()
                .find(|x| x.strategy.name() == "percentile" && x.resource == "memory"),
        ) {
            println!(
                "{}: {strategy} at 0.1 %: {} memory OOM events, percentile {}",
                run.name, p.oom_events, q.oom_events
            );
        }
    }
    let row = |s: &str, res: &str| {
        r.rows
            .iter()
            .find(|x| x.strategy.name() == s && x.resource == res)
    };
    for resource in ["cpu", "memory"] {
        let (Some(auto), Some(pct)) = (row("auto", resource), row("percentile", resource)) else {
            continue;
        };
        for base in ["percentile", "vpa"] {
            let Some(b) = row(base, resource) else {
                continue;
            };
            let better = auto.relative_slack < b.relative_slack
                && auto.violation_rate <= b.violation_rate
                && auto.oom_events <= b.oom_events;
            println!(
                "{}: auto vs {base} on {resource}: slack {:.1} % vs {:.1} %, violations {:.2} % vs {:.2} %, OOM {} vs {} -> {}",
                run.name,
                auto.relative_slack * 100.0,
                b.relative_slack * 100.0,
                auto.violation_rate * 100.0,
                b.violation_rate * 100.0,
                auto.oom_events,
                b.oom_events,
                if better {
                    "lower slack, no more violations or OOM"
                } else {
                    "NOT better on all three"
                }
            );
        }
        let _ = pct;
    }
}

fn real_data() -> PathBuf {
    std::env::var_os("HEADROOM_REAL_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    support::init_ort()?;
    let out = PathBuf::from(std::env::var("HEADROOM_BENCH_OUT").unwrap_or("bench-results".into()));
    std::fs::create_dir_all(&out)?;
    let mut runs = Vec::new();
    // `HEADROOM_PROMISE_ONLY=bitbrains-rnd,simulated`: only these runs.
    let only: Vec<String> = std::env::var("HEADROOM_PROMISE_ONLY")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);

    // Real VMs, one data set per directory.
    let root = real_data();
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        println!("no real data under {} (HEADROOM_REAL_DATA)", root.display());
    }
    for set in sets {
        let name = set
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("real")
            .to_string();
        if !wanted(&name) {
            continue;
        }
        let db = kit::TestDb::new().await?;
        let t = Instant::now();
        import(&db, &set).await?;
        let (first, last) = span(&db).await?;
        println!(
            "{name}: imported in {:.1} s, tasks from {first} to {last}",
            t.elapsed().as_secs_f64()
        );
        let split = first + (last - first) * 3 / 4;
        runs.push(backtest(&name, &db, split, &out).await?);
    }

    // Simulated tasks with interference (the simulator's mixes slow and
    // inflate services that share a task).
    if !wanted("simulated") {
        for run in &runs {
            verdicts(run);
        }
        return Ok(());
    }
    let db = kit::TestDb::new().await?;
    let sim = Workload::new(&SimOptions {
        seed: 21,
        services: 12,
        tasks: 400,
        interval: Duration::from_secs(20),
        ..SimOptions::default()
    })?;
    sim.write_postgres(&db.pool).await?;
    let split = sim.tasks[300].start;
    runs.push(backtest("simulated", &db, split, &out).await?);

    for run in &runs {
        verdicts(run);
    }
    Ok(())
}
