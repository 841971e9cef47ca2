//! `hr-cache`: memory that grows and plateaus. It allocates (and touches,
//! so the pages are resident) `--step-mib` every `--step-every` until
//! `--plateau-mib`, then holds it, reading it lightly.

use clap::Parser;
use headroom_examples::{Clock, Common, duty_cycle, serve_health};

#[derive(Debug, Parser)]
#[command(name = "hr-cache", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Memory held at the plateau, in MiB.
    #[arg(long, env = "HR_PLATEAU_MIB", default_value_t = 256)]
    plateau_mib: usize,
    /// Growth per step, in MiB.
    #[arg(long, env = "HR_STEP_MIB", default_value_t = 16)]
    step_mib: usize,
    /// Time between steps.
    #[arg(long, env = "HR_STEP_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    step_every: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    serve_health(cli.common.listen, "hr-cache")?;
    let clock = Clock::start(cli.common.duration);
    let plateau = (cli.plateau_mib as f64 * cli.common.intensity) as usize;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut last = -f64::MAX;
    while !clock.done() {
        let s = clock.seconds();
        if held.len() * cli.step_mib < plateau && s - last >= cli.step_every.as_secs_f64() {
            // Touch every page so it is resident, not just reserved.
            held.push(vec![0xA5; cli.step_mib * 1024 * 1024]);
            last = s;
        }
        let mut sum = 0u64;
        for block in &held {
            sum += block.iter().step_by(4096).map(|b| *b as u64).sum::<u64>();
        }
        std::hint::black_box(sum);
        duty_cycle(0.05, std::time::Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_is_also_an_environment_variable() {
        use clap::CommandFactory as _;
        headroom_options::assert_every_option_has_env(&super::Cli::command());
    }
}
