//! `hr-cruncher`: CPU-bound in phases. Warm-up ramps from 0.2 to 0.6 of a
//! core over 20 s, then steady at 0.6, a burst at 0.95 from 40 to 55 s of
//! every minute, and back. While `--peer` (an `hr-cache`) answers, every
//! unit of work also serialises for it: about 1.7× the CPU.

use clap::Parser;
use headroom_examples::{Clock, Common, duty_cycle, peer_alive, serve_health};

#[derive(Debug, Parser)]
#[command(name = "hr-cruncher", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// An `hr-cache` whose presence makes the work heavier.
    #[arg(long, env = "HR_PEER")]
    peer: Option<std::net::SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    serve_health(cli.common.listen, "hr-cruncher")?;
    let clock = Clock::start(cli.common.duration);
    let mut with_peer = false;
    let mut checked = -10.0;
    while !clock.done() {
        let s = clock.seconds();
        if s - checked >= 2.0 {
            with_peer = cli.peer.is_some_and(peer_alive);
            checked = s;
        }
        let phase = s % 60.0;
        let base = if s < 20.0 {
            0.2 + 0.4 * s / 20.0
        } else if (40.0..55.0).contains(&phase) {
            0.95
        } else {
            0.6
        };
        let load = base * if with_peer { 1.7 } else { 1.0 } * cli.common.intensity;
        // Above one core: a second thread takes the excess.
        if load > 1.0 {
            let extra = load - 1.0;
            let helper = std::thread::spawn(move || {
                duty_cycle(extra, std::time::Duration::from_millis(100))
            });
            duty_cycle(1.0, std::time::Duration::from_millis(100));
            let _ = helper.join();
        } else {
            duty_cycle(load, std::time::Duration::from_millis(100));
        }
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
