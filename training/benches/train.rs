//! Training throughput on about 1,000,000 simulated samples: wall time per
//! epoch and for a whole run, and the process's peak memory. The baseline,
//! measured in the same run, is one pass that fits the per-bucket
//! percentile baseline over the same rows (data handling without learning),
//! so the figures read as ratios on a shared, noisy machine.
//!
//! `cargo bench -p headroom-training --bench train` (`HEADROOM_BENCH_EPOCHS`
//! sets the epochs, default 5).

use std::time::Instant;

use headroom_simulator::{SimOptions, Workload};
use headroom_training::{
    TrainOptions,
    report::Baselines,
    train::{self, Checkpointing},
};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let epochs: usize = std::env::var("HEADROOM_BENCH_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    let workload = Workload::new(&SimOptions {
        tasks: 420,
        ..SimOptions::default()
    })?;
    let data = headroom_training::Dataset::from_workload(&workload)?;
    let simulate_s = t.elapsed().as_secs_f64();
    println!(
        "data: {} samples, {} tasks, {} services, {} resources (simulated in {simulate_s:.2} s)",
        data.rows.len(),
        data.tasks.len(),
        data.services.len(),
        data.resources.len()
    );
    let rows: Vec<usize> = (0..data.rows.len()).collect();
    let t = Instant::now();
    let _ = Baselines::fit(&data, &rows, &[0.5, 0.9, 0.99], 60.0);
    let baseline_s = t.elapsed().as_secs_f64();

    let opts = TrainOptions {
        epochs,
        patience: usize::MAX,
        ..TrainOptions::default()
    };
    let trained = train::train(&data, &opts, Checkpointing::default(), "bench", false)?;
    let per_epoch = trained.seconds / trained.history.len() as f64;
    println!("baseline (fit per-bucket percentiles over all rows): {baseline_s:.2} s");
    println!(
        "training: {} epochs, {} steps of {} in {:.1} s; {:.2} s per epoch = {:.1}x the baseline pass",
        trained.history.len(),
        trained.steps,
        opts.batch_size,
        trained.seconds,
        per_epoch,
        per_epoch / baseline_s
    );
    println!(
        "a default run (early stopping, seen at 25-35 epochs) takes about {:.0}-{:.0} s",
        per_epoch * 25.0,
        per_epoch * 35.0
    );
    println!(
        "final validation pinball loss {:.4}; peak memory {:.0} MiB",
        trained.history.last().map_or(f64::NAN, |h| h.validation),
        peak_rss_mib()
    );
    let samples = data.rows.len();
    headroom_testkit::bench::record(
        "training",
        &format!("one epoch over {samples} samples"),
        per_epoch,
        "s",
        Some(("one per-bucket percentile pass", baseline_s)),
    );
    headroom_testkit::bench::record(
        "training",
        &format!("{} epochs over {samples} samples", trained.history.len()),
        trained.seconds,
        "s",
        None,
    );
    headroom_testkit::bench::record("training", "peak memory", peak_rss_mib(), "MiB", None);
    Ok(())
}
