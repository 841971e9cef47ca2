//! `headroom-train`: learns the usage model from stored history (or a CSV
//! dump) and exports `model.onnx`; `simulate` writes ground-truth history.

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use headroom_simulator as simulate;
use headroom_training::{Dataset, Outputs, TrainOptions, dataset::Window, export};

#[derive(Debug, Parser)]
#[command(name = "headroom-train", version, about)]
struct Cli {
    /// PostgreSQL URL of the collector's store.
    #[arg(
        long,
        global = true,
        env = "HEADROOM_DATABASE_URL",
        // The URL may hold a password: `--help` must not print it.
        hide_env_values = true,
        default_value = headroom_store::DEFAULT_DATABASE_URL
    )]
    database_url: String,
    /// Log line format (`HEADROOM_LOG` sets the filter; default `warn`).
    #[arg(
        long,
        global = true,
        env = "HEADROOM_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: headroom_serving::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train on stored history (or a CSV dump) and export the model.
    Train(Train),
    /// Generate a simulated workload into PostgreSQL or a CSV file.
    Simulate(Simulate),
    /// Print what a model file is: its encoding and validation metrics.
    Inspect {
        /// The model.
        #[arg(default_value = "model.onnx")]
        model: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Train {
    /// Read samples from this CSV dump instead of PostgreSQL.
    #[arg(long, env = "HEADROOM_TRAIN_CSV")]
    csv: Option<PathBuf>,
    /// Only samples from this time on, RFC 3339.
    #[arg(long, env = "HEADROOM_TRAIN_START")]
    start: Option<chrono::DateTime<chrono::Utc>>,
    /// Only samples before this time, RFC 3339.
    #[arg(long, env = "HEADROOM_TRAIN_END")]
    end: Option<chrono::DateTime<chrono::Utc>>,
    /// Where to write the model.
    #[arg(long, env = "HEADROOM_MODEL", default_value = "model.onnx")]
    out: PathBuf,
    /// Validation report (JSON); default `report.json` beside the model.
    #[arg(long, env = "HEADROOM_TRAIN_REPORT")]
    report: Option<PathBuf>,
    /// Loss curve (PNG); default `loss.png` beside the model.
    #[arg(long, env = "HEADROOM_TRAIN_LOSS_PLOT")]
    loss_plot: Option<PathBuf>,
    /// Checkpoint (weights and optimizer state); default `model.ckpt`
    /// beside the model.
    #[arg(long, env = "HEADROOM_TRAIN_CHECKPOINT")]
    checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint instead of starting over.
    #[arg(long, env = "HEADROOM_TRAIN_RESUME")]
    resume: bool,
    /// Version recorded in the model (default: the UTC time of training).
    #[arg(long = "model-version", env = "HEADROOM_TRAIN_MODEL_VERSION")]
    model_version: Option<String>,
    /// Width of the time buckets of the per-bucket percentile baseline.
    #[arg(long, env = "HEADROOM_TRAIN_BASELINE_BUCKET", default_value = "1m", value_parser = humantime::parse_duration)]
    baseline_bucket: std::time::Duration,
    /// No progress bar.
    #[arg(long, env = "HEADROOM_TRAIN_QUIET")]
    quiet: bool,
    #[command(flatten)]
    options: TrainOptions,
}

#[derive(Debug, clap::Args)]
struct Simulate {
    /// Write a CSV file (the collector's dump format) instead of PostgreSQL.
    #[arg(long, env = "HEADROOM_SIM_CSV")]
    csv: Option<PathBuf>,
    /// Also write the drawn service profiles and tasks as JSON.
    #[arg(long, env = "HEADROOM_SIM_PROFILES")]
    profiles: Option<PathBuf>,
    #[command(flatten)]
    options: simulate::SimOptions,
}

fn beside(model: &std::path::Path, name: &str) -> PathBuf {
    model.with_file_name(name)
}

async fn connect(url: &str) -> anyhow::Result<headroom_store::PgPool> {
    headroom_store::connect(url, 2).await.with_context(|| {
        format!(
            "cannot connect to the database at {}",
            headroom_serving::options::redact_url(url)
        )
    })
}

/// The URL without its password, for messages.
async fn train(database_url: &str, t: Train) -> anyhow::Result<()> {
    // Refused before minutes of reading and training, not after.
    t.options.check()?;
    if let Some(dir) = t.out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        anyhow::bail!(
            "--out {}: the directory {} does not exist",
            t.out.display(),
            dir.display()
        );
    }
    let (data, source) = match &t.csv {
        Some(path) => (Dataset::from_csv(path)?, path.display().to_string()),
        None => {
            let pool = connect(database_url).await?;
            let window = Window {
                start: t.start,
                end: t.end,
            };
            let data = Dataset::from_postgres(&pool, &window)
                .await
                .context("while reading samples")?;
            (
                data,
                format!(
                    "the database at {}",
                    headroom_serving::options::redact_url(database_url)
                ),
            )
        }
    };
    if data.rows.is_empty() {
        anyhow::bail!("no samples to train on in {source}");
    }
    eprintln!(
        "{} samples of {} tasks, {} services, {} resources from {source}",
        data.rows.len(),
        data.tasks.len(),
        data.services.len(),
        data.resources.len()
    );
    let outputs = Outputs {
        report: Some(t.report.unwrap_or_else(|| beside(&t.out, "report.json"))),
        loss_plot: Some(t.loss_plot.unwrap_or_else(|| beside(&t.out, "loss.png"))),
        checkpoint: Some(t.checkpoint.unwrap_or_else(|| beside(&t.out, "model.ckpt"))),
        resume: t.resume,
        model: t.out,
    };
    let version = t
        .model_version
        .unwrap_or_else(|| chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
    let progress = !t.quiet && std::io::stderr().is_terminal();
    let bucket = t.baseline_bucket.as_secs_f64().max(1.0);
    let outcome = tokio::task::spawn_blocking(move || {
        headroom_training::fit_and_export(&data, &t.options, &outputs, &version, bucket, progress)
            .map(|o| (o, outputs))
    })
    .await??;
    let (o, outputs) = outcome;
    headroom_options::print_out(&format!("{}\n", o.report.table()))?;
    eprintln!(
        "model {} written to {} (best epoch {} of {}, {} steps in {:.1} s); report {}, loss plot {}",
        o.report.version,
        outputs.model.display(),
        o.trained.best_epoch,
        o.trained.history.len(),
        o.trained.steps,
        o.trained.seconds,
        outputs
            .report
            .as_deref()
            .map_or(String::new(), |p| p.display().to_string()),
        outputs
            .loss_plot
            .as_deref()
            .map_or(String::new(), |p| p.display().to_string()),
    );
    Ok(())
}

async fn simulate(database_url: &str, s: Simulate) -> anyhow::Result<()> {
    let workload = simulate::Workload::new(&s.options)?;
    if let Some(path) = &s.profiles {
        let json = serde_json::to_vec_pretty(&workload)?;
        std::fs::write(path, json).with_context(|| format!("while writing {}", path.display()))?;
    }
    let n = match &s.csv {
        Some(path) => simulate::write_csv_file(&workload, path)?,
        None => {
            let pool = connect(database_url).await?;
            workload.write_postgres(&pool).await?
        }
    };
    eprintln!(
        "{n} samples of {} tasks over {} services written to {}",
        workload.tasks.len(),
        workload.services.len(),
        s.csv.as_ref().map_or_else(
            || headroom_serving::options::redact_url(database_url),
            |p| p.display().to_string()
        )
    );
    Ok(())
}

fn inspect(model: &std::path::Path) -> anyhow::Result<()> {
    let spec = export::read_spec(model)?;
    headroom_options::print_out(&format!("{}\n", serde_json::to_string_pretty(&spec)?))?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    headroom_serving::telemetry::init_with(cli.log_format, "warn");
    let result = match cli.command {
        Command::Train(t) => train(&cli.database_url, t).await,
        Command::Simulate(s) => simulate(&cli.database_url, s).await,
        Command::Inspect { model } => inspect(&model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headroom-train: {}", headroom_options::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_is_also_an_environment_variable() {
        use clap::CommandFactory as _;
        headroom_options::assert_every_option_has_env(&super::Cli::command());
    }
}
