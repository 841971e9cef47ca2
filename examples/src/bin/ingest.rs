//! `hr-ingest`: IO-heavy. Each second it writes `--write-mib` to files in
//! `--dir` (synced to disk), reads back the previous file (mostly from
//! the page cache), and deletes
//! files older than a few seconds: steady disk writes and reads with
//! little CPU or memory.

use std::io::{Read, Write};

use clap::Parser;
use headroom_examples::{Clock, Common, serve_health};

#[derive(Debug, Parser)]
#[command(name = "hr-ingest", version)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Directory for the files (default: a new one under the temp dir).
    #[arg(long, env = "HR_DIR")]
    dir: Option<std::path::PathBuf>,
    /// MiB written per second.
    #[arg(long, env = "HR_WRITE_MIB", default_value_t = 8)]
    write_mib: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    serve_health(cli.common.listen, "hr-ingest")?;
    let dir = match cli.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("hr-ingest-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let clock = Clock::start(cli.common.duration);
    let chunk = vec![0x5Au8; 1024 * 1024];
    let per_second = ((cli.write_mib as f64) * cli.common.intensity).max(1.0) as usize;
    let mut n = 0u64;
    while !clock.done() {
        let t = std::time::Instant::now();
        let path = dir.join(format!("batch-{n}.bin"));
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..per_second {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        if n > 0 {
            let mut back = Vec::new();
            std::fs::File::open(dir.join(format!("batch-{}.bin", n - 1)))?
                .read_to_end(&mut back)?;
            std::hint::black_box(back.len());
        }
        if n >= 3 {
            let _ = std::fs::remove_file(dir.join(format!("batch-{}.bin", n - 3)));
        }
        n += 1;
        let rest = std::time::Duration::from_secs(1).saturating_sub(t.elapsed());
        std::thread::sleep(rest);
    }
    let _ = std::fs::remove_dir_all(&dir);
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
