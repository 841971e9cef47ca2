//! The sampler against real processes: a child burning about half a core
//! and another holding about 200 MB, watched by process name; and targets
//! that cannot be sampled, which fail alone with their name in the error.

mod common;

use std::time::Duration;

use common::*;

use headroom_agent::sampling::{Sampler, Selector, TargetError};

#[test]
fn measures_cpu_and_memory_of_processes_watched_by_name() {
    let (mut burner, d1) = spawn_named("hr-burner", BURN_HALF_A_CORE);
    let (mut holder, d2) = spawn_named("hr-holder", HOLD_200_MIB);
    wait_ready(&mut holder);

    let burn = Selector::Name("hr-burner".into());
    let hold = Selector::Name("hr-holder".into());
    let mut sampler = Sampler::new();
    sampler.refresh();
    let first = sampler.measure("burner", &burn, 1.0).unwrap();
    assert_eq!(first.get("cpu"), None, "no rate before a second reading");
    // Memory needs no second reading: the first counts, taken at once.
    let mut memory = vec![
        sampler
            .measure("holder", &hold, 1.0)
            .unwrap()
            .get("memory")
            .unwrap(),
    ];

    let mut cpu = Vec::new();
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

    assert_half_core_and_200_mib(&cpu, &memory);
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
