//! `headroom-predictor`: serves `model.onnx` over gRPC.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Parser;
use headroom_predictor::{InferenceOptions, PredictorConfig};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry};

/// Serves the Headroom usage model (model.onnx) over gRPC
/// (headroom.v1.Predictor) through ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "headroom-predictor", version)]
struct Cli {
    /// gRPC listen address.
    #[arg(long, env = "HEADROOM_LISTEN", default_value = "127.0.0.1:50053")]
    listen: SocketAddr,
    /// Model file, loaded at start and by ReloadModel without a path.
    #[arg(long, env = "HEADROOM_MODEL", default_value = "model.onnx")]
    model: PathBuf,
    /// ONNX Runtime shared library (libonnxruntime.so); `scripts/stack up`
    /// installs one and `.stack/env` sets it.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib: Option<PathBuf>,
    /// Most queries in one Predict (at least 1).
    #[arg(long, env = "HEADROOM_MAX_BATCH", default_value_t = 10_000, value_parser = at_least_one)]
    max_batch: usize,
    /// Most points in one PredictProfile or PredictTask answer.
    #[arg(long, env = "HEADROOM_MAX_POINTS", default_value_t = 200_000)]
    max_points: usize,
    /// How often the model file is checked for changes ("0s": never).
    #[arg(long, env = "HEADROOM_WATCH_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    watch_every: std::time::Duration,
    /// ONNX Runtime threads per run (default: half the cores, at least 1).
    #[arg(long, env = "HEADROOM_INTRA_THREADS", default_value_t = headroom_predictor::model::default_intra_threads())]
    intra_threads: usize,
    /// Most rows gathered from concurrent requests into one ONNX Runtime run.
    #[arg(long, env = "HEADROOM_MAX_BATCH_ROWS", default_value_t = headroom_predictor::model::DEFAULT_MAX_BATCH_ROWS)]
    max_batch_rows: usize,
    /// Longest a run waits for more requests while others are in flight
    /// ("0s": run what is queued at once; a lone request never waits).
    #[arg(long, env = "HEADROOM_BATCH_WAIT", default_value = "0s", value_parser = humantime::parse_duration)]
    batch_wait: std::time::Duration,
    /// Log format.
    #[arg(long, env = "HEADROOM_LOG_FORMAT", value_enum, default_value_t)]
    log_format: telemetry::LogFormat,
    #[command(flatten)]
    grpc: GrpcOptions,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    if let Err(e) = run(cli).await {
        eprintln!(
            "headroom-predictor: {}",
            headroom_options::one_line(e.as_ref())
        );
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    headroom_predictor::init_runtime(cli.ort_dylib.as_deref())?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("while binding {}", cli.listen))?;
    let config = PredictorConfig {
        model_path: cli.model,
        max_batch: cli.max_batch,
        max_points: cli.max_points,
        watch_every: (!cli.watch_every.is_zero()).then_some(cli.watch_every),
        inference: InferenceOptions {
            intra_threads: cli.intra_threads,
            max_batch_rows: cli.max_batch_rows,
            batch_wait: cli.batch_wait,
        },
        grpc: cli.grpc,
    };
    headroom_predictor::run(listener, shutdown::on_signals(), config).await?;
    Ok(())
}

/// A count of at least 1, for limits where 0 would refuse everything.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (0 would refuse every request)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_zero_batch_limit_is_refused() {
        use clap::Parser as _;
        let e = super::Cli::try_parse_from(["headroom-predictor", "--max-batch", "0"]).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert!(super::Cli::try_parse_from(["headroom-predictor", "--max-batch", "5"]).is_ok());
    }

    #[test]
    fn every_option_is_also_an_environment_variable() {
        use clap::CommandFactory as _;
        headroom_options::assert_every_option_has_env(&super::Cli::command());
    }
}
