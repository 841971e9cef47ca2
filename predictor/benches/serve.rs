//! Predictor latency and throughput over gRPC on loopback, against a raw
//! in-process `ort` run of the same model and inputs measured in the same
//! run: single-query p50/p99, a 1,024-query batch, and 16 concurrent
//! clients.
//!
//! `cargo bench -p headroom-predictor --bench serve` (needs ORT_DYLIB_PATH).

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use headroom_model::Query;
use headroom_predictor::{LoadedModel, PredictorConfig};
use headroom_proto::v1::{self, predictor_client::PredictorClient};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use headroom_training::{
    export,
    simulate::{SimOptions, Workload},
    train::{self, Checkpointing},
};

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dylib = std::env::var("ORT_DYLIB_PATH")?;
    headroom_predictor::init_runtime(Some(Path::new(&dylib)))?;
    let dir = tempfile::tempdir()?;
    let data = Workload::new(&SimOptions {
        tasks: 20,
        ..SimOptions::default()
    })?
    .dataset()?;
    let opts = headroom_training::TrainOptions {
        epochs: 1,
        ..Default::default()
    };
    let trained = train::train(&data, &opts, Checkpointing::default(), "bench", false)?;
    let path = dir.path().join("model.onnx");
    export::write_model(&path, &trained.net, &trained.spec)?;
    let spec = trained.spec.clone();

    let mix = spec.services[..3].to_vec();
    let query = |i: usize| v1::PredictQuery {
        task_services: mix.clone(),
        service: spec.services[i % 3].clone(),
        resource: spec.resources[i % spec.resources.len()].name.clone(),
        seconds: (i % 1800) as f64,
    };

    // Raw in-process ort: encode and run, no gRPC.
    let raw = LoadedModel::load(&path)?;
    let encode = |qs: &[v1::PredictQuery]| -> anyhow::Result<Vec<f32>> {
        let queries: Vec<Query<'_>> = qs
            .iter()
            .map(|q| Query {
                task_services: &q.task_services,
                service: &q.service,
                resource: &q.resource,
                seconds: q.seconds,
            })
            .collect();
        Ok(spec.encode(&queries)?)
    };
    let one = vec![query(0)];
    let batch: Vec<v1::PredictQuery> = (0..1024).map(query).collect();
    let mut raw_single = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        raw.run(&encode(&one)?, 1)?;
        raw_single.push(t.elapsed());
    }
    raw_single.sort();
    let mut raw_batch = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        raw.run(&encode(&batch)?, batch.len())?;
        raw_batch.push(t.elapsed());
    }
    raw_batch.sort();

    let config = PredictorConfig {
        model_path: path.clone(),
        max_batch: 10_000,
        max_points: 200_000,
        watch_every: None,
        grpc: GrpcOptions::default(),
    };
    let server = kit::spawn_server(|l, s| headroom_predictor::run(l, s, config)).await?;
    let channel = server.channel().await?;
    let mut client = PredictorClient::new(channel.clone());
    for _ in 0..200 {
        client
            .predict(v1::PredictRequest {
                queries: one.clone(),
            })
            .await?;
    }
    let mut single = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        client
            .predict(v1::PredictRequest {
                queries: one.clone(),
            })
            .await?;
        single.push(t.elapsed());
    }
    single.sort();
    let mut batched = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        client
            .predict(v1::PredictRequest {
                queries: batch.clone(),
            })
            .await?;
        batched.push(t.elapsed());
    }
    batched.sort();

    let clients = 16;
    let per_client = 500;
    let t = Instant::now();
    let one = Arc::new(one);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = PredictorClient::new(channel.clone());
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                c.predict(v1::PredictRequest {
                    queries: (*one).clone(),
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = (clients * per_client) as f64 / t.elapsed().as_secs_f64();
    let raw_rate = 1.0 / raw_single[raw_single.len() / 2].as_secs_f64();

    println!(
        "single query   raw ort p50 {:>8.1} µs  p99 {:>8.1} µs",
        us(percentile(&raw_single, 0.5)),
        us(percentile(&raw_single, 0.99))
    );
    println!(
        "single query   gRPC    p50 {:>8.1} µs  p99 {:>8.1} µs  ({:.1}x raw p99)",
        us(percentile(&single, 0.5)),
        us(percentile(&single, 0.99)),
        us(percentile(&single, 0.99)) / us(percentile(&raw_single, 0.99))
    );
    println!(
        "1,024 batch    raw ort p50 {:>8.1} µs; gRPC p50 {:>8.1} µs ({:.2}x raw)",
        us(percentile(&raw_batch, 0.5)),
        us(percentile(&batched, 0.5)),
        us(percentile(&batched, 0.5)) / us(percentile(&raw_batch, 0.5))
    );
    println!(
        "{clients} clients    {rate:.0} queries/s over gRPC; raw single-query rate {raw_rate:.0}/s ({:.2}x)",
        rate / raw_rate
    );
    server.stop().await
}
