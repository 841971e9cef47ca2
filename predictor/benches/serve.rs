//! Predictor latency and throughput over gRPC on loopback, against a raw
//! in-process `ort` run of the same model and inputs measured in the same
//! run: single-query p50/p99, a 1,024-query batch (as `Predict` queries
//! and as `PredictBatch` columns), and 16 concurrent clients.
//!
//! `cargo bench -p headroom-predictor --bench serve` (needs ORT_DYLIB_PATH).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use headroom_model::{INPUT, OUTPUT, Query};
use headroom_predictor::{InferenceOptions, PredictorConfig};
use headroom_proto::v1::{self, predictor_client::PredictorClient};
use headroom_serving::grpc::GrpcOptions;
use headroom_simulator::{SimOptions, Workload};
use headroom_testkit as kit;
use ort::value::TensorRef;

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
    // The model comes from the real trainer binary (built by
    // `cargo build --release --bins`, as scripts/bench does first).
    let workload = Workload::new(&SimOptions {
        tasks: 20,
        ..SimOptions::default()
    })?;
    let csv = dir.path().join("history.csv");
    headroom_simulator::write_csv_file(&workload, &csv)?;
    let path = dir.path().join("model.onnx");
    kit::train_from_csv(&csv, &path, "bench", 1).await?;
    let spec = headroom_predictor::LoadedModel::load(&path, &InferenceOptions::default())?.spec;

    let mix = spec.services[..3].to_vec();
    let query = |i: usize| v1::PredictQuery {
        task_services: mix.clone(),
        service: spec.services[i % 3].clone(),
        resource: spec.resources[i % spec.resources.len()].name.clone(),
        seconds: (i % 1800) as f64,
        ..Default::default()
    };

    // Raw in-process ort: encode and run a session built the way the
    // predictor builds one, no batcher, no gRPC.
    let inference = InferenceOptions::default();
    let mut raw = headroom_predictor::model::session(&std::fs::read(&path)?, &inference)?;
    let width = spec.width();
    let mut run = |x: &[f32], rows: usize| -> anyhow::Result<usize> {
        let input = ndarray::ArrayView2::from_shape((rows, width), x)?;
        let out = raw.run(ort::inputs![INPUT => TensorRef::from_array_view(input)?])?;
        Ok(out[OUTPUT].try_extract_array::<f32>()?.len())
    };
    let encode = |qs: &[v1::PredictQuery]| -> anyhow::Result<Vec<f32>> {
        let queries: Vec<Query<'_>> = qs
            .iter()
            .map(|q| Query {
                task_services: &q.task_services,
                service: &q.service,
                resource: &q.resource,
                seconds: q.seconds,
                context: None,
                task_start: chrono::Utc::now(),
            })
            .collect();
        Ok(spec.encode(&queries)?)
    };
    let one = vec![query(0)];
    let batch: Vec<v1::PredictQuery> = (0..1024).map(query).collect();
    let mut raw_single = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        run(&encode(&one)?, 1)?;
        raw_single.push(t.elapsed());
    }
    raw_single.sort();
    let mut raw_batch = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        run(&encode(&batch)?, batch.len())?;
        raw_batch.push(t.elapsed());
    }
    raw_batch.sort();

    // Where a served batch's time goes, in-process: the request's protobuf
    // encode + decode, resolving and encoding its rows, the answer's
    // protobuf encode + decode.
    let anatomy = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<Duration> {
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed());
        }
        times.sort();
        Ok(percentile(&times, 0.5))
    };
    let request = v1::PredictRequest {
        queries: batch.clone(),
    };
    let proto_in = anatomy(&mut || {
        let bytes = prost::Message::encode_to_vec(&request);
        let back: v1::PredictRequest = prost::Message::decode(&bytes[..])?;
        anyhow::ensure!(back.queries.len() == 1024);
        Ok(())
    })?;
    let resolve = anatomy(&mut || {
        encode(&batch)?;
        Ok(())
    })?;
    let answer = v1::PredictResponse {
        predictions: (0..1024)
            .map(|i| v1::Prediction {
                quantiles: spec
                    .quantiles
                    .iter()
                    .map(|q| v1::QuantileValue {
                        quantile: *q,
                        value: i as f64 * q,
                    })
                    .collect(),
            })
            .collect(),
        model_version: spec.version.clone(),
    };
    let proto_out = anatomy(&mut || {
        let bytes = prost::Message::encode_to_vec(&answer.clone());
        let back: v1::PredictResponse = prost::Message::decode(&bytes[..])?;
        anyhow::ensure!(back.predictions.len() == 1024);
        Ok(())
    })?;

    let columns = to_columns(&batch);
    let batching = serve(&path, inference.clone(), &one, &batch, &columns).await?;
    let unbatched = serve(
        &path,
        InferenceOptions {
            max_batch_rows: 1,
            ..inference.clone()
        },
        &one,
        &batch,
        &columns,
    )
    .await?;
    let waiting = serve(
        &path,
        InferenceOptions {
            batch_wait: Duration::from_micros(200),
            ..inference.clone()
        },
        &one,
        &batch,
        &columns,
    )
    .await?;
    let raw_rate = 1.0 / raw_single[raw_single.len() / 2].as_secs_f64();

    println!(
        "single query   raw ort p50 {:>8.1} µs  p99 {:>8.1} µs",
        us(percentile(&raw_single, 0.5)),
        us(percentile(&raw_single, 0.99))
    );
    println!(
        "single query   gRPC    p50 {:>8.1} µs  p99 {:>8.1} µs  ({:.1}x raw p99)",
        us(percentile(&batching.single, 0.5)),
        us(percentile(&batching.single, 0.99)),
        us(percentile(&batching.single, 0.99)) / us(percentile(&raw_single, 0.99))
    );
    println!(
        "1,024 batch    raw ort p50 {:>8.1} µs; gRPC p50 {:>8.1} µs ({:.2}x raw)",
        us(percentile(&raw_batch, 0.5)),
        us(percentile(&batching.batch, 0.5)),
        us(percentile(&batching.batch, 0.5)) / us(percentile(&raw_batch, 0.5))
    );
    println!(
        "1,024 columns  PredictBatch p50 {:>8.1} µs ({:.2}x raw)",
        us(percentile(&batching.columns, 0.5)),
        us(percentile(&batching.columns, 0.5)) / us(percentile(&raw_batch, 0.5))
    );
    println!(
        "  in-process: request proto {:.1} µs, resolve + encode {:.1} µs, answer build + proto {:.1} µs",
        us(proto_in),
        us(resolve),
        us(proto_out)
    );
    println!(
        "{CLIENTS} clients    {:.0} queries/s micro-batched (wait {:?}), {:.0} unbatched ({:.2}x), {:.0} with a 200 µs wait ({:.2}x); raw single-query rate {raw_rate:.0}/s",
        batching.rate,
        inference.batch_wait,
        unbatched.rate,
        batching.rate / unbatched.rate,
        waiting.rate,
        waiting.rate / unbatched.rate,
    );
    for (figure, raw, q) in [
        ("single query p50", "raw ort single p50", 0.5),
        ("single query p99", "raw ort single p99", 0.99),
    ] {
        kit::bench::record(
            "predictor",
            figure,
            us(percentile(&batching.single, q)),
            "µs",
            Some((raw, us(percentile(&raw_single, q)))),
        );
    }
    kit::bench::record(
        "predictor",
        "1,024-query batch p50",
        us(percentile(&batching.batch, 0.5)),
        "µs",
        Some(("raw ort batch p50", us(percentile(&raw_batch, 0.5)))),
    );
    kit::bench::record(
        "predictor",
        "1,024-query PredictBatch p50",
        us(percentile(&batching.columns, 0.5)),
        "µs",
        Some(("raw ort batch p50", us(percentile(&raw_batch, 0.5)))),
    );
    kit::bench::record(
        "predictor",
        &format!("{CLIENTS} clients"),
        batching.rate,
        "queries/s",
        Some(("unbatched", unbatched.rate)),
    );
    Ok(())
}

const CLIENTS: usize = 16;

struct Figures {
    single: Vec<Duration>,
    batch: Vec<Duration>,
    columns: Vec<Duration>,
    rate: f64,
}

/// The same queries as one `PredictBatch` request (they share one mix).
fn to_columns(batch: &[v1::PredictQuery]) -> v1::PredictBatchRequest {
    let mut columns = v1::PredictBatchRequest {
        task_services: batch[0].task_services.clone(),
        ..Default::default()
    };
    let index = |names: &mut Vec<String>, name: &str| -> u32 {
        match names.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                names.push(name.to_string());
                (names.len() - 1) as u32
            }
        }
    };
    for q in batch {
        let s = index(&mut columns.services, &q.service);
        let r = index(&mut columns.resources, &q.resource);
        columns.service_index.push(s);
        columns.resource_index.push(r);
        columns.seconds.push(q.seconds);
    }
    columns
}

/// Serves `path` with `inference` and measures it over loopback gRPC.
async fn serve(
    path: &Path,
    inference: InferenceOptions,
    one: &[v1::PredictQuery],
    batch: &[v1::PredictQuery],
    columns: &v1::PredictBatchRequest,
) -> anyhow::Result<Figures> {
    let config = PredictorConfig {
        model_path: path.to_path_buf(),
        max_batch: 10_000,
        max_points: 200_000,
        watch_every: None,
        inference,
        grpc: GrpcOptions::default(),
    };
    let server = kit::spawn_server(|l, s| headroom_predictor::run(l, s, config)).await?;
    let channel = server.channel().await?;
    let mut client = PredictorClient::new(channel.clone());
    let time = async |client: &mut PredictorClient<_>, queries: &[v1::PredictQuery]| {
        let request = v1::PredictRequest {
            queries: queries.to_vec(),
        };
        let t = Instant::now();
        client.predict(request).await?;
        anyhow::Ok(t.elapsed())
    };
    for _ in 0..200 {
        time(&mut client, one).await?;
    }
    let mut single = Vec::new();
    for _ in 0..2000 {
        single.push(time(&mut client, one).await?);
    }
    single.sort();
    let mut batched = Vec::new();
    for _ in 0..50 {
        batched.push(time(&mut client, batch).await?);
    }
    batched.sort();
    let mut columned = Vec::new();
    for _ in 0..50 {
        let request = columns.clone();
        let t = Instant::now();
        let answer = client.predict_batch(request).await?.into_inner();
        columned.push(t.elapsed());
        anyhow::ensure!(answer.values.len() == columns.seconds.len() * answer.quantiles.len());
    }
    columned.sort();

    let per_client = 500;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = PredictorClient::new(channel.clone());
        let one = one.to_vec();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                c.predict(v1::PredictRequest {
                    queries: one.clone(),
                })
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = (CLIENTS * per_client) as f64 / t.elapsed().as_secs_f64();
    server.stop().await?;
    Ok(Figures {
        single,
        batch: batched,
        columns: columned,
        rate,
    })
}
