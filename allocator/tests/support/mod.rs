//! What the allocator's tests and benchmark start: a real collector on a
//! test database, a real predictor over a model the real `headroom-train`
//! binary trained, and the allocator in front of them.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use headroom_allocator::{AllocatorConfig, ServiceOptions};
use headroom_collector::CollectorConfig;
use headroom_predictor::{InferenceOptions, PredictorConfig};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;

/// Loads ONNX Runtime from `ORT_DYLIB_PATH`.
pub fn init_ort() -> anyhow::Result<()> {
    let dylib = std::env::var("ORT_DYLIB_PATH")
        .context("ORT_DYLIB_PATH is not set: run `scripts/stack up` and source .stack/env")?;
    headroom_predictor::init_runtime(Some(Path::new(&dylib)))?;
    Ok(())
}

/// A query-only collector on `db`.
pub async fn collector(db: &kit::TestDb) -> anyhow::Result<kit::TestServer> {
    collector_with(db, GrpcOptions::default()).await
}

/// A query-only collector on `db` with `grpc` (limits, TLS).
pub async fn collector_with(
    db: &kit::TestDb,
    grpc: GrpcOptions,
) -> anyhow::Result<kit::TestServer> {
    let config = CollectorConfig {
        database_url: db.url.clone(),
        max_connections: 4,
        ingest: None,
        lifecycle: keep_raw(),
        grpc,
    };
    kit::spawn_server(|l, s| headroom_collector::run(l, s, config)).await
}

/// The collector's lifecycle with raw samples kept for 400 days. The
/// default 8 days would drop the older raw samples of a month-long real
/// trace (imported to end now) in the maintenance pass a starting
/// collector runs, while requests are already served: a backtest's main
/// run and its sweep then read different history (raw samples, then the
/// per-minute rollups), and the sweep's points disagree with the rows, as
/// the promise benchmark once showed. The trainer reads the raw samples.
fn keep_raw() -> headroom_store::lifecycle::LifecycleOptions {
    headroom_store::lifecycle::LifecycleOptions {
        raw_retention: std::time::Duration::from_secs(400 * 86_400),
        ..Default::default()
    }
}

/// A predictor serving `model`.
pub async fn predictor(model: PathBuf) -> anyhow::Result<kit::TestServer> {
    predictor_with(model, GrpcOptions::default()).await
}

/// A predictor serving `model` with `grpc` (limits, TLS).
pub async fn predictor_with(model: PathBuf, grpc: GrpcOptions) -> anyhow::Result<kit::TestServer> {
    let config = PredictorConfig {
        model_path: model,
        max_batch: 10_000,
        max_points: 200_000,
        watch_every: None,
        inference: InferenceOptions::default(),
        grpc,
    };
    kit::spawn_server(|l, s| headroom_predictor::run(l, s, config)).await
}

/// An allocator over `collector` and the predictor at `predictor`.
pub async fn allocator(
    collector: &kit::TestServer,
    predictor: &str,
    service: ServiceOptions,
) -> anyhow::Result<kit::TestServer> {
    allocator_with(collector, predictor, service, GrpcOptions::default()).await
}

/// [`allocator`] with server options `grpc` (e.g. a longer request
/// timeout for a backtest of many series with the whole sweep).
#[allow(dead_code)]
pub async fn allocator_with(
    collector: &kit::TestServer,
    predictor: &str,
    service: ServiceOptions,
    grpc: GrpcOptions,
) -> anyhow::Result<kit::TestServer> {
    let config = AllocatorConfig {
        collector: collector.url(),
        predictor: predictor.to_string(),
        service,
        grpc,
        upstream_tls: Default::default(),
    };
    kit::spawn_server(|l, s| headroom_allocator::run(l, s, config)).await
}

/// Trains the usage model on `db`'s history before `split` (all of it when
/// `None`) with `headroom-train` and writes `dir/model.onnx`.
pub async fn model_before(
    db: &kit::TestDb,
    split: Option<DateTime<Utc>>,
    version: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let model = dir.join("model.onnx");
    let out = model.display().to_string();
    let mut args = vec![
        "--database-url",
        &db.url,
        "--out",
        &out,
        "--model-version",
        version,
    ];
    let end = split.map(|t| t.to_rfc3339());
    if let Some(end) = &end {
        args.extend(["--end", end.as_str()]);
    }
    kit::train_model(&args).await?;
    Ok(model)
}
