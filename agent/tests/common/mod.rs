//! Child processes with known consumption, shared by the agent's tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
};

/// Runs `python3 -c code` under the process name `name` (a symlink to the
/// interpreter: the kernel names a process after the file it executed),
/// its stdout piped for [`wait_ready`].
pub fn spawn_named(name: &str, code: &str) -> (Child, PathBuf) {
    let python = which("python3");
    let dir =
        std::env::temp_dir().join(format!("headroom-agent-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&python, &link).unwrap();
    let child = std::process::Command::new(&link)
        .arg("-c")
        .arg(code)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    (child, dir)
}

/// Waits until `child` prints `ready` (the code says when it has done
/// what it was started for).
pub fn wait_ready(child: &mut Child) {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the child exited before it was ready");
}

/// The real interpreter behind `program` (PATH may hold a shim).
pub fn which(program: &str) -> PathBuf {
    let out = std::process::Command::new(program)
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Keeps its own CPU time at half its wall time (catching up after being
/// preempted), so it averages half a core on a busy machine too.
pub const BURN_HALF_A_CORE: &str = "import time\nstart = time.monotonic()\nbase = time.process_time()\nwhile True:\n    if time.process_time() - base < 0.5 * (time.monotonic() - start):\n        pass\n    else:\n        time.sleep(0.005)\n";
/// Touches every page of 200 MiB, says `ready`, then holds them.
pub const HOLD_200_MIB: &str = "import time\nx = bytearray(200 * 1024 * 1024)\nx[::4096] = b'\\x01' * (len(x) // 4096)\nprint('ready', flush=True)\ntime.sleep(120)\n";

/// Checks readings of the two children against what they consume: the
/// burner's CPU ticks average 0.5 ± 0.15 cores, every memory reading of the
/// holder is 200 MiB ± 15 %.
pub fn assert_half_core_and_200_mib(cpu: &[f64], memory: &[f64]) {
    let mean_cpu = cpu.iter().sum::<f64>() / cpu.len() as f64;
    assert!(
        (mean_cpu - 0.5).abs() <= 0.15,
        "cpu {mean_cpu:.3} cores (ticks {cpu:?}), want 0.5 ± 0.15"
    );
    let want = 200.0 * 1024.0 * 1024.0;
    for m in memory {
        assert!(
            (m - want).abs() <= 0.15 * want,
            "memory {:.0} MiB, want 200 MiB ± 15 %",
            m / 1048576.0
        );
    }
}

/// Publisher options for a test: the test broker, `topic` with
/// `partitions`, a spool in `spool`, small bounds.
pub fn test_publisher(
    topic: &str,
    partitions: i32,
    spool: PathBuf,
) -> headroom_agent::PublisherOptions {
    headroom_agent::PublisherOptions {
        brokers: headroom_testkit::kafka_brokers(),
        topic: topic.to_string(),
        partitions,
        buffer_records: 1000,
        spool_dir: spool,
        spool_bytes: 16 << 20,
        delivery_timeout: std::time::Duration::from_secs(5),
        kafka_options: Vec::new(),
    }
}
