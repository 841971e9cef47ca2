//! `headroom-predictor`: serves the usage model (`model.onnx`, written by
//! `headroom-train`) over gRPC (`headroom.v1.Predictor`) through ONNX
//! Runtime. Queries are encoded with the spec stored in the model file, so
//! a model is never served with the wrong encoding; `ReloadModel` swaps a
//! new file in atomically and keeps the old one when the new one is bad.
//!
//! Each series is predicted with the context the request gives for it, or
//! else the one the model stored at training time; a service the model
//! never saw is predicted from its context and refused without one. The
//! calendar features are read at `task_start + seconds`, `task_start`
//! being the current time when the request leaves it out.

pub mod error;
pub mod model;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use chrono::{DateTime, Utc};
use headroom_model::{Encoded, ModelSpec, Query, RowInput, SeriesContext};
use headroom_proto::v1::{
    self,
    predictor_server::{Predictor, PredictorServer},
};
use headroom_serving::grpc::{self, GrpcOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::Routes};
use tonic_health::server::HealthReporter;

pub use error::{Error, Result};
pub use model::{InferenceOptions, LoadedModel, init_runtime};

/// The gRPC service name, as health reports it.
pub const SERVICE_NAME: &str = "headroom.v1.Predictor";

/// Everything the predictor needs to run.
#[derive(Debug, Clone)]
pub struct PredictorConfig {
    /// Model file loaded at start and by `ReloadModel` without a path.
    pub model_path: PathBuf,
    /// Most queries in one `Predict`.
    pub max_batch: usize,
    /// Most points in one `PredictProfile` or `PredictTask` answer.
    pub max_points: usize,
    /// How often the model file is checked for a change (and, with no model
    /// yet, for its appearance); `None` turns watching off.
    pub watch_every: Option<std::time::Duration>,
    /// Session threads and micro-batching.
    pub inference: InferenceOptions,
    /// Server limits.
    pub grpc: GrpcOptions,
}

#[derive(Debug)]
struct State {
    model: RwLock<Option<Arc<LoadedModel>>>,
    /// The last failed reload (reason, when), cleared by a successful one:
    /// `ModelInfo` reports it so an operator sees why a new file is not
    /// serving.
    reload_failure: RwLock<Option<(String, DateTime<Utc>)>>,
    config: PredictorConfig,
    health: HealthReporter,
}

impl State {
    fn current(&self) -> Result<Arc<LoadedModel>> {
        self.model
            .read()
            .expect("the model slot is never poisoned: it is only swapped")
            .clone()
            .ok_or_else(|| {
                Error::NoModel(format!(
                    "{} was not loadable at start; call ReloadModel once it exists",
                    self.config.model_path.display()
                ))
            })
    }

    /// Records a reload that failed; the current model keeps serving.
    fn reload_failed(&self, e: &Error) {
        tracing::warn!(error = %e, "model reload refused; the current model keeps serving");
        metrics::counter!("headroom_predictor_reload_failures_total").increment(1);
        *self
            .reload_failure
            .write()
            .expect("the reload record is never poisoned: it is only replaced") =
            Some((e.to_string(), Utc::now()));
    }

    /// Swaps a model in; requests already holding the old one finish on it.
    async fn install(&self, loaded: Arc<LoadedModel>) {
        *self
            .reload_failure
            .write()
            .expect("the reload record is never poisoned: it is only replaced") = None;
        tracing::info!(path = %loaded.path, version = %loaded.spec.version, "model swapped in");
        let old = self
            .model
            .write()
            .expect("the model slot is never poisoned: it is only swapped")
            .replace(loaded.clone());
        if let Some(old) = old {
            metrics::gauge!("headroom_predictor_model_info", "version" => old.spec.version.clone())
                .set(0.0);
        }
        metrics::gauge!("headroom_predictor_model_info", "version" => loaded.spec.version.clone())
            .set(1.0);
        self.set_ready(true).await;
    }

    /// Readiness: SERVING once a model is loaded. Liveness (the server-wide
    /// entry) stays SERVING while the predictor waits for its model.
    async fn set_ready(&self, ready: bool) {
        grpc::report_ready(&self.health, SERVICE_NAME, ready).await;
    }
}

/// Loads a model file on the blocking pool.
async fn load(path: PathBuf, options: InferenceOptions) -> Result<LoadedModel> {
    tokio::task::spawn_blocking(move || LoadedModel::load(&path, &options))
        .await
        .map_err(|e| Error::Runtime(format!("model load panicked: {e}")))?
}

/// Runs the predictor on `listener` until `shutdown` is cancelled. The
/// model is loaded first; a missing file leaves the server up but
/// NOT_SERVING until `ReloadModel` succeeds, a bad file is an error.
pub async fn run(
    listener: TcpListener,
    shutdown: CancellationToken,
    config: PredictorConfig,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let model = match load(config.model_path.clone(), config.inference.clone()).await {
        Ok(m) => {
            tracing::info!(path = %m.path, version = %m.spec.version, "model loaded");
            metrics::gauge!("headroom_predictor_model_info", "version" => m.spec.version.clone())
                .set(1.0);
            Some(Arc::new(m))
        }
        Err(Error::NotFound(m)) => {
            tracing::warn!(reason = %m, "starting without a model; NOT_SERVING until ReloadModel");
            None
        }
        Err(e) => return Err(e),
    };
    let serving = model.is_some();
    let state = Arc::new(State {
        model: RwLock::new(model),
        reload_failure: RwLock::new(None),
        config,
        health,
    });
    state.set_ready(serving).await;
    if let Some(every) = state.config.watch_every {
        tokio::spawn(watch(state.clone(), every, shutdown.clone()));
    }
    let api = PredictorServer::new(PredictorApi {
        state: state.clone(),
    })
    .max_decoding_message_size(state.config.grpc.max_message_bytes)
    .max_encoding_message_size(state.config.grpc.max_message_bytes);
    let routes = Routes::new(health_service).add_service(api);
    let served = grpc::serve(
        listener,
        routes,
        &[SERVICE_NAME],
        &state.config.grpc,
        shutdown,
    )
    .await;
    grpc::report_health(&state.health, SERVICE_NAME, false).await;
    Ok(served?)
}

/// What identifies a version of the model file on disk.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reloads the configured model file whenever it changes (or first
/// appears). A file that fails to load is logged and retried on its next
/// change; the current model keeps serving.
async fn watch(state: Arc<State>, every: std::time::Duration, shutdown: CancellationToken) {
    let path = state.config.model_path.clone();
    let mut seen = state.current().ok().and_then(|_| file_stamp(&path));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let stamp = file_stamp(&path);
        if stamp.is_none() || stamp == seen {
            continue;
        }
        seen = stamp;
        match load(path.clone(), state.config.inference.clone()).await {
            Ok(m) => state.install(Arc::new(m)).await,
            Err(e) => state.reload_failed(&e),
        }
    }
}

#[derive(Debug)]
struct PredictorApi {
    state: Arc<State>,
}

/// Encodes resolved queries, runs them in the model's next batch and
/// decodes each row with its series' scale.
async fn infer(model: &LoadedModel, queries: &[Encoded]) -> Result<Vec<Vec<f64>>> {
    let w = model.spec.width();
    let mut x = vec![0.0; queries.len() * w];
    for (q, row) in queries.iter().zip(x.chunks_exact_mut(w)) {
        model.spec.encode_into(q, row);
    }
    let k = model.spec.quantiles.len();
    let out = model.run(x, queries.len()).await?;
    Ok(queries
        .iter()
        .zip(out.chunks_exact(k))
        .map(|(q, row)| {
            let scale = model.spec.series_scale(q.resource, &q.context);
            model.spec.decode(scale, row)
        })
        .collect())
}

/// The contexts a request gives, by (service, resource), each checked.
#[derive(Debug, Default)]
struct Contexts<'a> {
    given: HashMap<(&'a str, &'a str), SeriesContext>,
}

impl<'a> Contexts<'a> {
    /// Reads `contexts` of a request; `field` names them in errors (e.g.
    /// `contexts` or `queries[3].contexts`). Refuses a series given twice
    /// and numbers that cannot describe usage, naming the entry.
    fn of(contexts: &'a [v1::SeriesContext], field: &str) -> Result<Self> {
        let mut given = HashMap::with_capacity(contexts.len());
        for (i, c) in contexts.iter().enumerate() {
            let context = SeriesContext {
                p50: c.p50,
                p90: c.p90,
                p99: c.p99,
                max: c.max,
                samples: c.samples,
            };
            context.check().map_err(|reason| {
                Error::InvalidArgument(format!(
                    "{field}[{i}] ({}/{}): {reason}",
                    c.service, c.resource
                ))
            })?;
            if given
                .insert((c.service.as_str(), c.resource.as_str()), context)
                .is_some()
            {
                return Err(Error::InvalidArgument(format!(
                    "{field}[{i}]: {}/{} is given twice",
                    c.service, c.resource
                )));
            }
        }
        Ok(Self { given })
    }

    fn get(&self, service: &'a str, resource: &'a str) -> Option<&SeriesContext> {
        self.given.get(&(service, resource))
    }
}

/// A request's task start, or now when it gives none.
fn task_start(start: Option<&prost_types::Timestamp>, field: &str) -> Result<DateTime<Utc>> {
    let Some(t) = start else {
        return Ok(Utc::now());
    };
    u32::try_from(t.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{field} {}s {}ns is not a valid time",
                t.seconds, t.nanos
            ))
        })
}

/// A columnar batch encoded into model rows: `x` is `[n, width]`
/// row-major, `scales[i]` is the scale σ of query i's series.
#[derive(Debug)]
struct EncodedColumns {
    x: Vec<f32>,
    scales: Vec<f64>,
}

/// Checks a `PredictBatchRequest` against the model and the batch limit and
/// encodes it, resolving each name and each series' context once.
fn encode_columns(
    spec: &ModelSpec,
    r: &v1::PredictBatchRequest,
    max: usize,
) -> Result<EncodedColumns> {
    let n = r.seconds.len();
    batch_size(n, max)?;
    if r.service_index.len() != n || r.resource_index.len() != n {
        return Err(Error::InvalidArgument(format!(
            "service_index, resource_index and seconds need one entry per query: got {}, {} and {n}",
            r.service_index.len(),
            r.resource_index.len()
        )));
    }
    let contexts = Contexts::of(&r.contexts, "contexts")?;
    let start = headroom_model::unix_seconds(task_start(r.task_start.as_ref(), "task_start")?);
    let services: Vec<Option<usize>> = r.services.iter().map(|s| spec.service_index(s)).collect();
    let resources = r
        .resources
        .iter()
        .map(|s| spec.resource_index(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mix: Vec<usize> = r
        .task_services
        .iter()
        .filter_map(|s| spec.service_index(s))
        .collect();
    // Each (service, resource) pair's context, found on first use.
    let mut series: Vec<Option<SeriesContext>> = vec![None; services.len() * resources.len()];
    let w = spec.width();
    let mut x = vec![0.0; n * w];
    let mut scales = Vec::with_capacity(n);
    let mut row_mix = Vec::with_capacity(mix.len() + 1);
    for (i, row) in x.chunks_exact_mut(w).enumerate() {
        let si = r.service_index[i] as usize;
        let ri = r.resource_index[i] as usize;
        let service = *services
            .get(si)
            .ok_or_else(|| out_of_range(i, "service_index", r.service_index[i], services.len()))?;
        let resource = *resources.get(ri).ok_or_else(|| {
            out_of_range(i, "resource_index", r.resource_index[i], resources.len())
        })?;
        let seconds = r.seconds[i];
        headroom_model::check_seconds(seconds)
            .map_err(|e| Error::InvalidArgument(format!("query {i}: {e}")))?;
        let slot = &mut series[si * resources.len() + ri];
        let context = match slot {
            Some(c) => *c,
            None => {
                let name = &r.services[si];
                let c = spec
                    .context_for(
                        name,
                        service,
                        resource,
                        contexts.get(name, &r.resources[ri]),
                    )
                    .map_err(|e| Error::InvalidArgument(format!("query {i}: {e}")))?;
                *slot = Some(c);
                c
            }
        };
        row_mix.clear();
        row_mix.extend_from_slice(&mix);
        row_mix.extend(service);
        spec.encode_row(
            &RowInput {
                mix: &row_mix,
                service,
                resource,
                context: &context,
                task_start: start,
                seconds,
            },
            row,
        );
        scales.push(spec.series_scale(resource, &context));
    }
    Ok(EncodedColumns { x, scales })
}

/// Refuses empty batches and batches above the configured limit.
fn batch_size(n: usize, max: usize) -> Result<()> {
    if n == 0 || n > max {
        return Err(Error::InvalidArgument(format!(
            "a batch holds 1 to {max} queries, got {n}"
        )));
    }
    Ok(())
}

fn out_of_range(query: usize, column: &str, index: u32, len: usize) -> Error {
    Error::InvalidArgument(format!(
        "query {query}: {column} {index} is out of range ({len} names given)"
    ))
}

/// The seconds of a curve: 0, step, 2·step, … up to the horizon.
fn curve_seconds(horizon: f64, step: f64, max_points: usize, curves: usize) -> Result<Vec<f64>> {
    if !(horizon.is_finite() && horizon > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "horizon_seconds must be greater than 0, got {horizon}"
        )));
    }
    if !(step.is_finite() && step > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "step_seconds must be greater than 0, got {step}"
        )));
    }
    // In floating point: a huge horizon over a tiny step must not overflow.
    let points = (horizon / step).floor() + 1.0;
    if points * curves as f64 > max_points as f64 {
        return Err(Error::InvalidArgument(format!(
            "{points} points × {curves} curves exceed the limit of {max_points}; raise step_seconds"
        )));
    }
    let points = points as usize;
    Ok((0..points).map(|i| i as f64 * step).collect())
}

fn profile(
    spec: &ModelSpec,
    service: &str,
    resource: usize,
    seconds: &[f64],
    values: &[Vec<f64>],
) -> v1::Profile {
    v1::Profile {
        service: service.to_string(),
        resource: spec.resources[resource].name.clone(),
        seconds: seconds.to_vec(),
        curves: spec
            .quantiles
            .iter()
            .enumerate()
            .map(|(i, q)| v1::QuantileCurve {
                quantile: *q,
                values: values.iter().map(|v| v[i]).collect(),
            })
            .collect(),
        unit: spec.resources[resource].unit.clone(),
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn info(model: &LoadedModel) -> v1::ModelInfoResponse {
    let spec = &model.spec;
    v1::ModelInfoResponse {
        version: spec.version.clone(),
        services: spec.services.clone(),
        resources: spec.resources.iter().map(|r| r.name.clone()).collect(),
        quantiles: spec.quantiles.clone(),
        trained_from: spec.trained_from.map(timestamp),
        trained_to: spec.trained_to.map(timestamp),
        metrics: spec
            .metrics
            .iter()
            .map(|m| v1::ModelMetric {
                name: m.name.clone(),
                resource: m.resource.clone(),
                value: m.value,
            })
            .collect(),
        feature_layout: spec.feature_layout,
        path: model.path.clone(),
        loaded_at: Some(timestamp(model.loaded_at)),
        last_reload_error: String::new(),
        last_reload_failed_at: None,
        held_out_tasks: spec.held_out_tasks.clone(),
    }
}

#[tonic::async_trait]
impl Predictor for PredictorApi {
    async fn predict(
        &self,
        request: Request<v1::PredictRequest>,
    ) -> Result<Response<v1::PredictResponse>, Status> {
        let model = self.state.current()?;
        let r = request.into_inner();
        batch_size(r.queries.len(), self.state.config.max_batch)?;
        let encoded = r
            .queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let contexts = Contexts::of(&q.contexts, &format!("queries[{i}].contexts"))?;
                let start = task_start(q.task_start.as_ref(), &format!("queries[{i}].task_start"))?;
                model
                    .spec
                    .resolve(&Query {
                        task_services: &q.task_services,
                        service: &q.service,
                        resource: &q.resource,
                        seconds: q.seconds,
                        context: contexts.get(&q.service, &q.resource),
                        task_start: start,
                    })
                    .map_err(|e| Error::InvalidArgument(format!("query {i}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let values = infer(&model, &encoded).await?;
        let quantiles = &model.spec.quantiles;
        Ok(Response::new(v1::PredictResponse {
            predictions: values
                .into_iter()
                .map(|v| v1::Prediction {
                    quantiles: quantiles
                        .iter()
                        .zip(v)
                        .map(|(q, value)| v1::QuantileValue {
                            quantile: *q,
                            value,
                        })
                        .collect(),
                })
                .collect(),
            model_version: model.spec.version.clone(),
        }))
    }

    async fn predict_batch(
        &self,
        request: Request<v1::PredictBatchRequest>,
    ) -> Result<Response<v1::PredictBatchResponse>, Status> {
        let model = self.state.current()?;
        let r = request.into_inner();
        let encoded = encode_columns(&model.spec, &r, self.state.config.max_batch)?;
        let n = encoded.scales.len();
        let k = model.spec.quantiles.len();
        let out = model.run(encoded.x, n).await?;
        let mut values = Vec::with_capacity(n * k);
        for (row, scale) in out.chunks_exact(k).zip(&encoded.scales) {
            model.spec.decode_into(*scale, row, &mut values);
        }
        Ok(Response::new(v1::PredictBatchResponse {
            quantiles: model.spec.quantiles.clone(),
            values,
            model_version: model.spec.version.clone(),
        }))
    }

    async fn predict_profile(
        &self,
        request: Request<v1::PredictProfileRequest>,
    ) -> Result<Response<v1::PredictProfileResponse>, Status> {
        let model = self.state.current()?;
        let r = request.into_inner();
        let seconds = curve_seconds(
            r.horizon_seconds,
            r.step_seconds,
            self.state.config.max_points,
            1,
        )?;
        let contexts = Contexts::of(&r.contexts, "contexts")?;
        let start = task_start(r.task_start.as_ref(), "task_start")?;
        let encoded = seconds
            .iter()
            .map(|s| {
                model.spec.resolve(&Query {
                    task_services: &r.task_services,
                    service: &r.service,
                    resource: &r.resource,
                    seconds: *s,
                    context: contexts.get(&r.service, &r.resource),
                    task_start: start,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::from)?;
        let resource = encoded[0].resource;
        let values = infer(&model, &encoded).await?;
        Ok(Response::new(v1::PredictProfileResponse {
            profile: Some(profile(
                &model.spec,
                &r.service,
                resource,
                &seconds,
                &values,
            )),
            model_version: model.spec.version.clone(),
        }))
    }

    async fn predict_task(
        &self,
        request: Request<v1::PredictTaskRequest>,
    ) -> Result<Response<v1::PredictTaskResponse>, Status> {
        let model = self.state.current()?;
        let r = request.into_inner();
        let spec = &model.spec;
        if r.task_services.is_empty() {
            return Err(Status::invalid_argument(
                "task_services is empty: name at least one service of the task",
            ));
        }
        let resources: Vec<String> = if r.resources.is_empty() {
            spec.resources.iter().map(|x| x.name.clone()).collect()
        } else {
            r.resources.clone()
        };
        let mut services = r.task_services.clone();
        services.sort();
        services.dedup();
        let curves = services.len() * resources.len();
        let seconds = curve_seconds(
            r.horizon_seconds,
            r.step_seconds,
            self.state.config.max_points,
            curves,
        )?;
        let contexts = Contexts::of(&r.contexts, "contexts")?;
        let start = task_start(r.task_start.as_ref(), "task_start")?;
        let mut encoded = Vec::with_capacity(curves * seconds.len());
        for service in &services {
            for resource in &resources {
                for s in &seconds {
                    encoded.push(
                        spec.resolve(&Query {
                            task_services: &services,
                            service,
                            resource,
                            seconds: *s,
                            context: contexts.get(service, resource),
                            task_start: start,
                        })
                        .map_err(Error::from)?,
                    );
                }
            }
        }
        let resource_index: Vec<usize> = encoded
            .iter()
            .step_by(seconds.len())
            .map(|e| e.resource)
            .collect();
        let values = infer(&model, &encoded).await?;
        let profiles = values
            .chunks(seconds.len())
            .zip(resource_index)
            .enumerate()
            .map(|(i, (v, res))| profile(spec, &services[i / resources.len()], res, &seconds, v))
            .collect();
        Ok(Response::new(v1::PredictTaskResponse {
            profiles,
            model_version: spec.version.clone(),
        }))
    }

    async fn model_info(
        &self,
        _request: Request<v1::ModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let model = self.state.current()?;
        let mut answer = info(&model);
        if let Some((reason, at)) = self
            .state
            .reload_failure
            .read()
            .expect("the reload record is never poisoned: it is only replaced")
            .clone()
        {
            answer.last_reload_error = reason;
            answer.last_reload_failed_at = Some(timestamp(at));
        }
        Ok(Response::new(answer))
    }

    async fn reload_model(
        &self,
        request: Request<v1::ReloadModelRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let r = request.into_inner();
        let path = if r.path.is_empty() {
            self.state.config.model_path.clone()
        } else {
            PathBuf::from(r.path)
        };
        let loaded = Arc::new(
            load(path, self.state.config.inference.clone())
                .await
                .inspect_err(|e| self.state.reload_failed(e))?,
        );
        let answer = info(&loaded);
        self.state.install(loaded).await;
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use headroom_model::{ModelSpec, Query, SeriesContext};
    use headroom_proto::v1::{self, PredictBatchRequest};

    use super::{curve_seconds, encode_columns};

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn columns() -> PredictBatchRequest {
        PredictBatchRequest {
            task_services: vec!["web".into()],
            services: vec!["db".into(), "api".into()],
            resources: vec!["memory".into(), "cpu".into()],
            service_index: vec![1, 0, 1],
            resource_index: vec![0, 1, 1],
            seconds: vec![150.0, 0.0, 3.5],
            contexts: vec![],
            task_start: Some(prost_types::Timestamp {
                seconds: start().timestamp(),
                nanos: 0,
            }),
        }
    }

    #[test]
    fn columns_encode_to_the_rows_of_the_same_point_queries() {
        let spec = ModelSpec::example();
        let got = encode_columns(&spec, &columns(), 10).unwrap();
        let mix = vec!["web".to_string()];
        let q = |service, resource, seconds| Query {
            task_services: &mix,
            service,
            resource,
            seconds,
            context: None,
            task_start: start(),
        };
        let want = spec
            .encode(&[
                q("api", "memory", 150.0),
                q("db", "cpu", 0.0),
                q("api", "cpu", 3.5),
            ])
            .unwrap();
        assert_eq!(got.x, want);
        // σ of each series' stored context: p90 (2 × p50) above the floor.
        assert_eq!(got.scales, [2e8, 2.0, 1.0]);
    }

    #[test]
    fn an_unknown_service_is_encoded_from_its_context() {
        let spec = ModelSpec::example();
        let mut r = columns();
        r.services[0] = "billing".into();
        let e = encode_columns(&spec, &r, 10).unwrap_err().to_string();
        assert!(
            e.starts_with("query 1: service \"billing\" is unknown")
                && e.contains("pass a SeriesContext"),
            "{e}"
        );
        r.contexts.push(v1::SeriesContext {
            service: "billing".into(),
            resource: "cpu".into(),
            p50: 1.0,
            p90: 3.0,
            p99: 4.0,
            max: 5.0,
            samples: 12,
        });
        let got = encode_columns(&spec, &r, 10).unwrap();
        assert_eq!(got.scales[1], 3.0);
        // A given context also overrides a stored one.
        r.contexts.push(v1::SeriesContext {
            service: "api".into(),
            resource: "cpu".into(),
            p50: 10.0,
            p90: 30.0,
            p99: 40.0,
            max: 50.0,
            samples: 12,
        });
        assert_eq!(encode_columns(&spec, &r, 10).unwrap().scales[2], 30.0);
        let given = SeriesContext {
            p50: 10.0,
            p90: 30.0,
            p99: 40.0,
            max: 50.0,
            samples: 12,
        };
        let mix = vec!["web".to_string()];
        let want = spec
            .encode(&[Query {
                task_services: &mix,
                service: "api",
                resource: "cpu",
                seconds: 3.5,
                context: Some(&given),
                task_start: start(),
            }])
            .unwrap();
        let w = spec.width();
        assert_eq!(
            &encode_columns(&spec, &r, 10).unwrap().x[2 * w..],
            &want[..]
        );
    }

    #[test]
    fn bad_columns_are_refused_naming_the_problem() {
        let spec = ModelSpec::example();
        let refused = |edit: &dyn Fn(&mut PredictBatchRequest), max: usize| {
            let mut r = columns();
            edit(&mut r);
            encode_columns(&spec, &r, max).unwrap_err().to_string()
        };
        let e = refused(&|_| {}, 2);
        assert!(e.contains("1 to 2 queries, got 3"), "{e}");
        let e = refused(&|r| r.seconds.clear(), 10);
        assert!(e.contains("got 0"), "{e}");
        let e = refused(
            &|r| {
                r.resource_index.pop();
            },
            10,
        );
        assert!(e.contains("one entry per query: got 3, 2 and 3"), "{e}");
        let e = refused(&|r| r.service_index[2] = 2, 10);
        assert!(
            e.contains("query 2: service_index 2 is out of range (2 names given)"),
            "{e}"
        );
        let e = refused(&|r| r.resource_index[1] = 9, 10);
        assert!(e.contains("query 1: resource_index 9"), "{e}");
        let e = refused(&|r| r.services[0] = "nginx".into(), 10);
        assert!(e.contains("nginx") && e.contains("api, db, web"), "{e}");
        let e = refused(&|r| r.resources[1] = "gpu".into(), 10);
        assert!(e.contains("gpu") && e.contains("cpu, memory"), "{e}");
        let e = refused(&|r| r.seconds[1] = f64::NAN, 10);
        assert!(e.starts_with("query 1:"), "{e}");
        let e = refused(&|r| r.seconds[2] = -1.0, 10);
        assert!(e.starts_with("query 2:"), "{e}");
        let bad = v1::SeriesContext {
            service: "api".into(),
            resource: "cpu".into(),
            p50: 1.0,
            p90: f64::INFINITY,
            p99: 4.0,
            max: 5.0,
            samples: 12,
        };
        let e = refused(&|r| r.contexts.push(bad.clone()), 10);
        assert_eq!(
            e,
            "contexts[0] (api/cpu): p90 must be a finite number at least 0, got inf"
        );
        let twice = v1::SeriesContext {
            p90: 3.0,
            ..bad.clone()
        };
        let e = refused(&|r| r.contexts = vec![twice.clone(), twice.clone()], 10);
        assert_eq!(e, "contexts[1]: api/cpu is given twice");
        let e = refused(
            &|r| {
                r.task_start = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            },
            10,
        );
        assert!(
            e.starts_with("task_start ") && e.contains("not a valid time"),
            "{e}"
        );
        // A service of the mix the model never saw is left out, not refused.
        let mut r = columns();
        r.task_services.push("redis".into());
        assert_eq!(
            encode_columns(&spec, &r, 10).unwrap().x,
            encode_columns(&spec, &columns(), 10).unwrap().x
        );
    }

    #[test]
    fn curves_run_from_zero_to_the_horizon_within_the_limit() {
        assert_eq!(
            curve_seconds(60.0, 20.0, 100, 1).unwrap(),
            [0.0, 20.0, 40.0, 60.0]
        );
        assert_eq!(
            curve_seconds(50.0, 20.0, 100, 1).unwrap(),
            [0.0, 20.0, 40.0]
        );
        assert!(curve_seconds(0.0, 1.0, 100, 1).is_err());
        assert!(curve_seconds(10.0, 0.0, 100, 1).is_err());
        assert!(curve_seconds(10.0, f64::NAN, 100, 1).is_err());
        assert!(
            curve_seconds(1e300, f64::MIN_POSITIVE, 1000, 1).is_err(),
            "no overflow"
        );
        let e = curve_seconds(100.0, 1.0, 1000, 10).unwrap_err();
        assert!(e.to_string().contains("exceed the limit of 1000"), "{e}");
    }
}
