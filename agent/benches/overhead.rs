//! The agent's own cost: one release agent watching 100 processes (one
//! service each, by PID) at a 1 s interval, next to an agent watching
//! nothing as the same-run baseline, both publishing to the stack's broker.
//! Reports CPU as % of one core and peak RSS (VmHWM) for each.
//!
//! `cargo bench -p headroom-agent --bench overhead` (HEADROOM_BENCH_SECS
//! sets the measured window, default 60).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const PROCESSES: usize = 100;

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent running");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().expect("utime");
    let stime: f64 = fields[12].parse().expect("stime");
    (utime + stime) / ticks
}

/// Peak resident set size in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmHWM")
        / 1024.0
}

fn agent(name: &str, watch: &[String]) -> Child {
    let brokers =
        std::env::var("HEADROOM_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let spool = std::env::temp_dir().join(format!("headroom-bench-{name}-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom-agent"));
    cmd.args(["--listen", "127.0.0.1:0", "--interval", "1s"])
        .args(["--discovery", "false", "--brokers", &brokers])
        .args(["--topic", "headroom-bench-agent", "--host", name])
        .arg("--spool-dir")
        .arg(&spool)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for w in watch {
        cmd.arg("--watch").arg(w);
    }
    cmd.spawn().expect("agent starts")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks; there are none to list
    }
    let secs: u64 = std::env::var("HEADROOM_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ticks = clock_ticks_per_second();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|_| Command::new("sleep").arg("100000").spawn().expect("sleep"))
        .collect();
    let watch: Vec<String> = children
        .iter()
        .enumerate()
        .map(|(i, c)| format!("svc-{i:03}=pid:{}", c.id()))
        .collect();
    let mut watching = agent("watching", &watch);
    let mut idle = agent("idle", &[]);
    // Warm-up: start, first ticks, producer connection.
    std::thread::sleep(Duration::from_secs(5));
    let start = Instant::now();
    let cpu0 = (
        cpu_seconds(watching.id(), ticks),
        cpu_seconds(idle.id(), ticks),
    );
    std::thread::sleep(Duration::from_secs(secs));
    let wall = start.elapsed().as_secs_f64();
    let cpu = (
        (cpu_seconds(watching.id(), ticks) - cpu0.0) / wall * 100.0,
        (cpu_seconds(idle.id(), ticks) - cpu0.1) / wall * 100.0,
    );
    let rss = (peak_rss_mib(watching.id()), peak_rss_mib(idle.id()));
    for c in [&mut watching, &mut idle] {
        let _ = c.kill();
        let _ = c.wait();
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("agent overhead over {wall:.0} s at a 1 s interval");
    println!("| agent | CPU (% of one core) | peak RSS (MiB) |");
    println!("|---|---|---|");
    println!(
        "| {PROCESSES} processes watched | {:.2} | {:.1} |",
        cpu.0, rss.0
    );
    println!(
        "| nothing watched (baseline) | {:.2} | {:.1} |",
        cpu.1, rss.1
    );
    println!(
        "| ratio | {:.2}x | {:.2}x |",
        cpu.0 / cpu.1.max(0.01),
        rss.0 / rss.1
    );
    println!("goal: under 1 % of one core and under 20 MB with {PROCESSES} processes");
    let watched = format!("{PROCESSES} processes watched");
    headroom_testkit::bench::record(
        "agent",
        &format!("CPU, {watched}"),
        cpu.0,
        "% of a core",
        Some(("nothing watched", cpu.1)),
    );
    headroom_testkit::bench::record(
        "agent",
        &format!("peak RSS, {watched}"),
        rss.0,
        "MiB",
        Some(("nothing watched", rss.1)),
    );
}
