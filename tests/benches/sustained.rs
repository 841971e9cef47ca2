//! Sustained load through the pipeline: a steady stream of usage records
//! (produced here at `HEADROOM_SUSTAINED_RATE` records/s, 6 samples each)
//! plus an agent process sampling 20 real processes, through the broker
//! into a collector process and PostgreSQL, while a client queries the
//! collector every 2 s. Runs `HEADROOM_SUSTAINED_SECS` (600) seconds,
//! samples the collector's and the agent's resident memory every 5 s, and
//! reports the slope after a warm-up (MiB per minute; flat is ~0) and that
//! every produced sample was stored once. Event times lie in the hour
//! before the start, inside the retention window, so maintenance keeps them.
//!
//!   cargo bench -p headroom-tests --bench sustained   (or scripts/bench sustained)

#[path = "../../collector/tests/common/mod.rs"]
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use headroom_proto::v1::{self, collector_client::CollectorClient};
use headroom_testkit as kit;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TASK: &str = "sustained";
const SERVICES: usize = 20;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds the collector and agent binaries (release) and returns their
/// directory.
fn binaries() -> anyhow::Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "headroom-collector",
            "-p",
            "headroom-agent",
        ])
        .status()
        .context("while building the collector and the agent")?;
    anyhow::ensure!(
        status.success(),
        "building the collector and the agent failed"
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Ok(target.join("release"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Least-squares slope of `points` (minutes, MiB), MiB per minute.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

/// Kills the child processes however the run ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env_or("HEADROOM_SUSTAINED_SECS", 600);
    let rate = env_or("HEADROOM_SUSTAINED_RATE", 500);
    let warmup = (secs / 5).clamp(10, 60);
    let bin = binaries()?;
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("sustained", 4).await?;
    let spool = tempfile::tempdir()?;
    let collector_port = free_port()?;
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(bin.join("headroom-collector"))
            .env("HEADROOM_DATABASE_URL", &db.url)
            .env("HEADROOM_KAFKA_BROKERS", kit::kafka_brokers())
            .env("HEADROOM_TOPIC", &topic)
            .env("HEADROOM_GROUP", kit::unique_name("sustained"))
            .env("HEADROOM_LISTEN", format!("127.0.0.1:{collector_port}"))
            .env("HEADROOM_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    // Twenty real processes for the agent to sample.
    let sleepers: Vec<Child> = (0..SERVICES)
        .map(|_| Command::new("sleep").arg((secs + 120).to_string()).spawn())
        .collect::<Result<_, _>>()?;
    let mut agent = Command::new(bin.join("headroom-agent"));
    agent
        .env("HEADROOM_KAFKA_BROKERS", kit::kafka_brokers())
        .env("HEADROOM_TOPIC", &topic)
        .env("HEADROOM_LISTEN", format!("127.0.0.1:{}", free_port()?))
        .env("HEADROOM_SPOOL_DIR", spool.path())
        .env("HEADROOM_LOG", "warn")
        .args(["--discovery", "false"]);
    for (i, s) in sleepers.iter().enumerate() {
        agent.args(["--watch", &format!("sleeper-{i}=pid:{}", s.id())]);
    }
    children.0.extend(sleepers);
    children.0.push(agent.stdout(Stdio::null()).spawn()?);
    let collector_pid = children.0[0].id();
    let agent_pid = children.0.last().map(Child::id).unwrap_or_default();

    let url = format!("http://127.0.0.1:{collector_port}");
    let channel = kit::eventually("the collector answers", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()
        }
    })
    .await?;
    let client = CollectorClient::new(channel);

    // A steady producer, a querying client and the memory sampler.
    let producer: FutureProducer = kit::producer_config().set("linger.ms", "20").create()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let queries = tokio::spawn({
        let mut client = client.clone();
        async move {
            // Answer times, with the resolution of each answer.
            let mut answers: Vec<(Duration, i32)> = Vec::new();
            while Instant::now() < deadline {
                let filter = Some(v1::UsageFilter {
                    task_ids: vec![TASK.into()],
                    ..Default::default()
                });
                let t = Instant::now();
                if let Ok(answer) = client.usage_stats(v1::UsageStatsRequest { filter }).await {
                    answers.push((t.elapsed(), answer.into_inner().resolution));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            answers
        }
    });
    let sampler = tokio::spawn(async move {
        let mut points = Vec::new();
        while Instant::now() < deadline {
            let t = started.elapsed().as_secs_f64() / 60.0;
            points.push((t, rss_mib(collector_pid), rss_mib(agent_pid)));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        points
    });
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    let mut produced: u64 = 0;
    let start_ms = chrono::Utc::now().timestamp_millis();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    while Instant::now() < deadline {
        interval.tick().await;
        for _ in 0..per_tick {
            let service = format!("svc-{}", produced % 50);
            // Recent times (within retention): each service gets a sample
            // every 100 ms of event time, from an hour before the start.
            let ts = start_ms - 3_600_000 + (produced / 50) as i64 * 100;
            let payload = common::usage(
                TASK,
                &service,
                ts,
                &[
                    ("cpu", 0.5),
                    ("memory", 1e8),
                    ("disk_read", 1.0),
                    ("disk_write", 2.0),
                    ("net_rx", 3.0),
                    ("net_tx", 4.0),
                ],
            );
            let record = FutureRecord::to(&topic).key(&service).payload(&payload);
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
            produced += 1;
        }
        if pending.len() > 5_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending.drain(..) {
        d.await?.map_err(|(e, _)| e)?;
    }
    let answers = queries.await?;
    let answered = answers.len();
    let mut times: Vec<f64> = answers.iter().map(|a| a.0.as_secs_f64() * 1e3).collect();
    times.sort_by(f64::total_cmp);
    let rollup_answers = answers
        .iter()
        .filter(|a| a.1 != v1::Resolution::Raw as i32)
        .count();
    let points = sampler.await?;
    let want = (produced * 6) as i64;
    let stored = kit::eventually("every sample stored", Duration::from_secs(300), || async {
        let n = common::count_samples(&db.pool, TASK).await;
        (n >= want).then_some(n)
    })
    .await?;

    let after: Vec<_> = points
        .iter()
        .filter(|p| p.0 * 60.0 >= warmup as f64)
        .collect();
    let collector: Vec<(f64, f64)> = after.iter().filter_map(|p| p.1.map(|m| (p.0, m))).collect();
    let agent: Vec<(f64, f64)> = after.iter().filter_map(|p| p.2.map(|m| (p.0, m))).collect();
    println!(
        "sustained load: {secs} s at {rate} records/s ({} samples/s) + an agent sampling {SERVICES} processes; {answered} UsageStats answered",
        rate * 6
    );
    if let (Some(first), Some(max)) = (times.first(), times.last()) {
        let p50 = times[times.len() / 2];
        println!(
            "UsageStats of the running task: p50 {p50:.1} ms, fastest {first:.1} ms, slowest {max:.1} ms; {rollup_answers} of {answered} answered from rollups"
        );
        kit::bench::record(
            "sustained",
            "UsageStats of the running task, p50",
            p50,
            "ms",
            Some(("fastest answer, ms", *first)),
        );
        kit::bench::record("sustained", "UsageStats, slowest", *max, "ms", None);
    }
    println!(
        "stored {stored} of {want} produced samples ({})",
        if stored == want {
            "all, once"
        } else {
            "MISMATCH"
        }
    );
    println!(
        "| process | RSS after warm-up (MiB) | RSS at the end (MiB) | slope (MiB/min) | samples |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, s) in [("collector", &collector), ("agent", &agent)] {
        let (first, last) = (
            s.first().map_or(f64::NAN, |p| p.1),
            s.last().map_or(f64::NAN, |p| p.1),
        );
        let k = slope(s);
        println!(
            "| {name} | {first:.1} | {last:.1} | {k:+.3} | {} |",
            s.len()
        );
        kit::bench::record(
            "sustained",
            &format!("{name} RSS slope over {} min", (secs - warmup) / 60),
            k,
            "MiB/min",
            Some(("RSS after warm-up, MiB", first)),
        );
    }
    anyhow::ensure!(stored == want, "stored {stored} samples, produced {want}");
    Ok(())
}
