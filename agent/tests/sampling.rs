//! The sampler against real processes: a child burning about half a core
//! and another holding about 200 MB, watched by process name; and targets
//! that cannot be sampled, which fail alone with their name in the error.

use std::{path::PathBuf, process::Child, time::Duration};

use headroom_agent::sampling::{Sampler, Selector, TargetError};

/// Runs `python3 -c code` under the process name `name` (a symlink to the
/// interpreter: the kernel names a process after the file it executed).
fn spawn_named(name: &str, code: &str) -> (Child, PathBuf) {
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
        .spawn()
        .unwrap();
    (child, dir)
}

/// The real interpreter behind `program` (PATH may hold a shim).
fn which(program: &str) -> PathBuf {
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
const BURN_HALF_A_CORE: &str = "import time\nstart = time.monotonic()\nbase = time.process_time()\nwhile True:\n    if time.process_time() - base < 0.5 * (time.monotonic() - start):\n        pass\n    else:\n        time.sleep(0.005)\n";
const HOLD_200_MIB: &str = "import time\nx = bytearray(200 * 1024 * 1024)\nx[::4096] = b'\\x01' * (len(x) // 4096)\ntime.sleep(120)\n";

#[test]
fn measures_cpu_and_memory_of_processes_watched_by_name() {
    let (mut burner, d1) = spawn_named("hr-burner", BURN_HALF_A_CORE);
    let (mut holder, d2) = spawn_named("hr-holder", HOLD_200_MIB);
    std::thread::sleep(Duration::from_millis(1500)); // the holder fills its pages

    let burn = Selector::Name("hr-burner".into());
    let hold = Selector::Name("hr-holder".into());
    let mut sampler = Sampler::new();
    sampler.refresh();
    let first = sampler.measure("burner", &burn, 1.0).unwrap();
    assert_eq!(first.get("cpu"), None, "no rate before a second reading");
    sampler.measure("holder", &hold, 1.0).unwrap();

    let mut cpu = Vec::new();
    let mut memory = Vec::new();
    let mut last = std::time::Instant::now();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        sampler.refresh();
        let elapsed = last.elapsed().as_secs_f64();
        last = std::time::Instant::now();
        let b = sampler.measure("burner", &burn, elapsed).unwrap();
        let h = sampler.measure("holder", &hold, elapsed).unwrap();
        assert_eq!(
            b.get("net_rx"),
            None,
            "a process's network is not observable"
        );
        cpu.push(b.get("cpu").unwrap());
        memory.push(h.get("memory").unwrap());
    }
    let _ = burner.kill();
    let _ = holder.kill();
    let _ = (burner.wait(), holder.wait());
    let _ = (std::fs::remove_dir_all(d1), std::fs::remove_dir_all(d2));

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

#[test]
fn targets_that_cannot_be_sampled_fail_alone_and_name_themselves() {
    let mut sampler = Sampler::new();
    sampler.refresh();
    let unused_pid = 4_000_000; // above the kernel's pid_max
    assert_eq!(
        sampler.measure("ghost", &Selector::Pid(unused_pid), 1.0),
        Err(TargetError::NoSuchPid(unused_pid))
    );
    let err = sampler
        .measure(
            "box",
            &Selector::Cgroup("/sys/fs/cgroup/no/such/headroom".into()),
            1.0,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("/sys/fs/cgroup/no/such/headroom"),
        "{err}"
    );
    let err = sampler
        .measure("nobody", &Selector::Name("hr-nothing-runs".into()), 1.0)
        .unwrap_err();
    assert!(err.to_string().contains("hr-nothing-runs"), "{err}");
    // The agent's own process is still measured.
    let me = sampler
        .measure("me", &Selector::Pid(std::process::id()), 1.0)
        .unwrap();
    assert!(me.get("memory").unwrap() > 0.0);
}
