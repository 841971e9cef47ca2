//! The Alibaba importer at trace scale: generates a `container_usage.csv`
//! of N rows (default 10,000,000) and its `container_meta.csv`, imports
//! them with the release `headroom-collector import alibaba` into a fresh
//! database (placed to end now: a first pass over the timestamps, then the
//! import), and reports rows/s, samples/s and the importer's peak RSS
//! (VmHWM, polled every 50 ms). Baseline, measured in the same run: the
//! store's write path alone (`write_batch` of 1,000,000 samples of the same
//! shape built in memory, in the importer's batch size): the importer's
//! ceiling, and what the collector's Kafka ingest also writes through.
//!
//! `cargo bench -p headroom-collector --bench import [-- ROWS]`

use std::{
    io::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use headroom_store::{self as store, Batch, Lookups, Row, TaskSeen};
use headroom_testkit as kit;

const CONTAINERS: usize = 10_000;
const MACHINES: usize = 1_000;
const APPS: usize = 500;
/// Seconds between two samples of a container (the trace's interval).
const INTERVAL: usize = 10;

/// Writes the meta and usage files: `rows` usage rows, every container
/// once per interval, in time order as the trace is published.
fn generate(dir: &std::path::Path, rows: usize) -> anyhow::Result<()> {
    let mut meta = std::io::BufWriter::new(std::fs::File::create(dir.join("meta.csv"))?);
    for c in 0..CONTAINERS {
        writeln!(
            meta,
            "c_{c},m_{},0,app_{},started,{},{},{}",
            c % MACHINES,
            c % APPS,
            100 * (1 + c % 4),
            200 * (1 + c % 4),
            1 + c % 8
        )?;
    }
    meta.flush()?;
    let mut usage =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join("usage.csv"))?);
    // A cheap deterministic spread of utilisations (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = i % CONTAINERS;
        let ts = (i / CONTAINERS) * INTERVAL;
        writeln!(
            usage,
            "c_{c},m_{},{ts},{},{},,,,,,{}",
            c % MACHINES,
            x % 100,
            (x >> 8) % 100,
            (x >> 16) % 30
        )?;
    }
    usage.flush()?;
    Ok(())
}

/// Samples/s of `write_batch` alone over `n` samples shaped as the import's.
async fn write_path(n: usize) -> anyhow::Result<f64> {
    let db = kit::TestDb::new().await?;
    store::migrate(&db.pool).await?;
    let lookups = Lookups::new();
    let origin = 1_790_000_000_000_000i64;
    let mut done = 0;
    let started = Instant::now();
    while done < n {
        let mut batch = Batch::default();
        for i in done..(done + 20_000).min(n) {
            let row = i / 2;
            let c = row % CONTAINERS;
            let ts = (row / CONTAINERS * INTERVAL) as i64;
            let task = format!("alibaba-m_{}-{}", c % MACHINES, ts / 3600);
            let service = format!("app_{}", c % APPS);
            batch.merge_task(TaskSeen {
                id: task.clone(),
                start_us: origin + ts / 3600 * 3_600_000_000,
                end_us: Some(origin + (ts / 3600 + 1) * 3_600_000_000),
                services: vec![service.clone()],
            });
            batch.rows.push(Row {
                task_id: task,
                service,
                instance: format!("c_{c}"),
                resource: if i % 2 == 0 { "cpu" } else { "memory" },
                value: (i % 97) as f64,
                ts_us: origin + ts * 1_000_000,
            });
        }
        done += batch.rows.len();
        store::write_batch(&db.pool, &lookups, &batch, true).await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Peak resident set of a process, in bytes, from `/proc/PID/status`.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().context("ROWS must be a whole number"))
        .transpose()?
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    generate(dir.path(), rows)?;
    let bytes = std::fs::metadata(dir.path().join("usage.csv"))?.len();
    println!(
        "generated {rows} usage rows ({:.0} MiB) in {:.1} s",
        bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    let baseline = write_path(1_000_000).await?;
    println!("baseline: write_batch alone, {baseline:.0} samples/s");

    let db = kit::TestDb::new().await?;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
        .args(["import", "alibaba", "--meta"])
        .arg(dir.path().join("meta.csv"))
        .arg("--usage")
        .arg(dir.path().join("usage.csv"))
        .env("HEADROOM_DATABASE_URL", &db.url)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err)?;
    }
    anyhow::ensure!(status.success(), "the import failed: {err}");
    let samples = db.scalar("SELECT count(*) FROM samples").await? as f64;
    anyhow::ensure!(
        samples as usize == 2 * rows,
        "stored {samples}, expected {}",
        2 * rows
    );
    let (rate, sample_rate) = (rows as f64 / seconds, samples / seconds);
    let mib = peak as f64 / 1048576.0;
    println!("{}", err.trim());
    println!("| figure | value |\n| --- | ---: |");
    println!("| usage rows | {rows} |");
    println!("| import, wall clock | {seconds:.1} s |");
    println!("| rows/s | {rate:.0} |");
    println!(
        "| samples/s | {sample_rate:.0} ({:.2}× write_batch alone, {baseline:.0}) |",
        sample_rate / baseline
    );
    println!("| peak RSS | {mib:.1} MiB (goal < 200 MB) |");
    kit::bench::record("import", "alibaba rows/s", rate, "rows/s", None);
    kit::bench::record(
        "import",
        "alibaba samples/s",
        sample_rate,
        "samples/s",
        Some(("write_batch alone", baseline)),
    );
    kit::bench::record("import", "alibaba peak RSS", mib, "MiB", None);
    Ok(())
}
