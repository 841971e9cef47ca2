//! Where the allocator's inputs come from: history from the collector
//! (`ExportSamples`, `GetTask`, `ListTasks`) and quantile curves from the
//! predictor (`PredictTask`, `ModelInfo`), over gRPC, as domain types.

use std::collections::{BTreeMap, HashMap};

use headroom_proto::v1::{
    self, collector_client::CollectorClient, predictor_client::PredictorClient,
};
use tonic::{Status, transport::Channel};

use super::convert::{seconds_of, task_info, timestamp};
use crate::{
    error::{Error, Result},
    history::{History, Obs, Summaries, TaskInfo},
    quantiles::Curves,
    strategy::Summary,
};

/// Largest answer read from an upstream, in bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// An upstream's refusal as the allocator's error.
pub(crate) fn upstream(what: &'static str) -> impl Fn(Status) -> Error {
    move |s| Error::Upstream {
        what,
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

fn export_request(
    services: &[String],
    resources: &[String],
    task_ids: &[String],
    start: Option<f64>,
    end: Option<f64>,
    provisioned: bool,
) -> v1::ExportSamplesRequest {
    v1::ExportSamplesRequest {
        filter: Some(v1::UsageFilter {
            services: services.to_vec(),
            resources: resources.to_vec(),
            task_ids: task_ids.to_vec(),
            start: start.map(timestamp),
            end: end.map(timestamp),
            // Every replica: what a service gets is what one replica needs,
            // learnt from all of them.
            instances: Vec::new(),
        }),
        chunk_size: 0,
        provisioned,
    }
}

/// The collector, as the allocator uses it.
#[derive(Debug, Clone)]
pub struct Collector {
    client: CollectorClient<Channel>,
}

impl Collector {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: CollectorClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES),
        }
    }

    /// Replicas of each service: the most instances that reported it in
    /// one stored task (0 for a service without samples).
    pub async fn replicas(&self) -> Result<std::collections::HashMap<String, u32>> {
        let services = self
            .client
            .clone()
            .list_services(v1::ListServicesRequest {})
            .await
            .map_err(upstream("the collector"))?
            .into_inner()
            .services;
        Ok(services
            .into_iter()
            .map(|s| (s.name, s.instances))
            .collect())
    }

    /// One task.
    pub async fn task(&self, id: &str) -> Result<TaskInfo> {
        let t = self
            .client
            .clone()
            .get_task(v1::GetTaskRequest { id: id.to_string() })
            .await
            .map_err(upstream("the collector"))?
            .into_inner();
        Ok(task_info(&t))
    }

    /// Tasks that ran `service`, started within `[start, end)` (unix
    /// seconds; unbounded when `None`), newest first.
    pub async fn tasks(
        &self,
        service: &str,
        start: Option<f64>,
        end: Option<f64>,
    ) -> Result<Vec<TaskInfo>> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .client
                .clone()
                .list_tasks(v1::ListTasksRequest {
                    service: service.to_string(),
                    start: start.map(timestamp),
                    end: end.map(timestamp),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .map_err(upstream("the collector"))?
                .into_inner();
            out.extend(page.tasks.iter().map(task_info));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// The task that started last, if the collector holds any.
    pub async fn newest_task(&self) -> Result<Option<TaskInfo>> {
        let page = self
            .client
            .clone()
            .list_tasks(v1::ListTasksRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
            .map_err(upstream("the collector"))?
            .into_inner();
        Ok(page.tasks.first().map(task_info))
    }

    /// Samples of `services` × `resources` within `[start, end)` (unix
    /// seconds; unbounded when `None`), or of `task_ids` when given.
    pub async fn history(
        &self,
        services: &[String],
        resources: &[String],
        task_ids: &[String],
        start: Option<f64>,
        end: Option<f64>,
    ) -> Result<History> {
        self.export(services, resources, task_ids, start, end, false)
            .await
    }

    /// Summaries of every series of `services` × `resources` (all when
    /// empty) within `[start, end)`, built while the samples stream in.
    pub async fn summaries(
        &self,
        services: &[String],
        resources: &[String],
        start: Option<f64>,
        end: Option<f64>,
        half_life: f64,
    ) -> Result<Summaries> {
        let mut out = Summaries::new();
        let mut tasks: HashMap<String, u64> = HashMap::new();
        let request = export_request(services, resources, &[], start, end, false);
        self.each_chunk(request, |chunk| {
            for s in chunk.samples {
                let next = tasks.len() as u64;
                let task = *tasks.entry(s.task_id).or_insert(next);
                out.entry((s.service, s.resource))
                    .or_insert_with_key(|k| Summary::for_resource(&k.1, half_life))
                    .add_of(
                        &s.instance,
                        task,
                        s.value,
                        s.ts.as_ref().map_or(0.0, seconds_of),
                    );
            }
        })
        .await?;
        Ok(out)
    }

    /// Streams an export, handing each chunk to `f`.
    async fn each_chunk(
        &self,
        request: v1::ExportSamplesRequest,
        mut f: impl FnMut(v1::ExportSamplesResponse),
    ) -> Result<()> {
        let mut stream = self
            .client
            .clone()
            .export_samples(request)
            .await
            .map_err(upstream("the collector"))?
            .into_inner();
        while let Some(chunk) = stream.message().await.map_err(upstream("the collector"))? {
            f(chunk);
        }
        Ok(())
    }

    /// What operators allocated to `services` in `task_ids` (imported
    /// traces), shaped as history.
    pub async fn provisioned(
        &self,
        services: &[String],
        resources: &[String],
        task_ids: &[String],
    ) -> Result<History> {
        self.export(services, resources, task_ids, None, None, true)
            .await
    }

    async fn export(
        &self,
        services: &[String],
        resources: &[String],
        task_ids: &[String],
        start: Option<f64>,
        end: Option<f64>,
        provisioned: bool,
    ) -> Result<History> {
        let mut history = History::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let request = export_request(services, resources, task_ids, start, end, provisioned);
        self.each_chunk(request, |chunk| {
            for t in &chunk.tasks {
                index.entry(t.id.clone()).or_insert_with(|| {
                    history.tasks.push(task_info(t));
                    history.tasks.len() - 1
                });
            }
            for s in chunk.samples {
                let Some(&task) = index.get(&s.task_id) else {
                    continue;
                };
                history
                    .series
                    .entry((s.service, s.resource))
                    .or_default()
                    .push(Obs {
                        ts: s.ts.as_ref().map_or(0.0, seconds_of),
                        task,
                        value: s.value,
                    });
            }
        })
        .await?;
        Ok(history)
    }
}

/// The predictor, as the allocator uses it.
#[derive(Debug, Clone)]
pub struct Predictor {
    client: PredictorClient<Channel>,
}

/// Curves of a task's services and the model that drew them.
#[derive(Debug, Clone)]
pub struct Predicted {
    /// Curves per (service, resource).
    pub curves: BTreeMap<(String, String), Curves>,
    /// Model version.
    pub model_version: String,
}

/// What the loaded model is, as far as backtests care.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Version.
    pub version: String,
    /// End of its training window, unix seconds, when known.
    pub trained_to: Option<f64>,
    /// The services it was trained on.
    pub services: Vec<String>,
    /// The resources it predicts.
    pub resources: Vec<String>,
    /// Tasks held out of its training, which it never fitted.
    pub held_out_tasks: Vec<String>,
}

impl ModelInfo {
    /// The services it knows, as a set.
    pub fn known(&self) -> std::collections::HashSet<String> {
        self.services.iter().cloned().collect()
    }

    /// Those of `resources` it predicts, in their order.
    pub fn predictable(&self, resources: &[String]) -> Vec<String> {
        resources
            .iter()
            .filter(|r| self.resources.contains(r))
            .cloned()
            .collect()
    }
}

impl Predictor {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: PredictorClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES),
        }
    }

    /// What the loaded model is.
    pub async fn info(&self) -> Result<ModelInfo> {
        let info = self
            .client
            .clone()
            .model_info(v1::ModelInfoRequest {})
            .await
            .map_err(upstream("the predictor"))?
            .into_inner();
        Ok(ModelInfo {
            version: info.version,
            trained_to: info.trained_to.as_ref().map(seconds_of),
            services: info.services,
            resources: info.resources,
            held_out_tasks: info.held_out_tasks,
        })
    }

    /// Quantile curves for every service × resource of the mix `services`
    /// from 0 to `horizon` every `step` seconds, for a task starting at
    /// `task_start` (unix seconds; the model's calendar features read it).
    /// Every prediction of one request is read at one instant — now for a
    /// recommendation, the split for a backtest — so a backtest of past
    /// tasks answers the same on every run.
    pub async fn task(
        &self,
        services: &[String],
        resources: &[String],
        horizon: f64,
        step: f64,
        task_start: f64,
    ) -> Result<Predicted> {
        let answer = self
            .client
            .clone()
            .predict_task(v1::PredictTaskRequest {
                task_services: services.to_vec(),
                resources: resources.to_vec(),
                horizon_seconds: horizon,
                step_seconds: step,
                task_start: Some(timestamp(task_start)),
                ..Default::default()
            })
            .await
            .map_err(upstream("the predictor"))?
            .into_inner();
        let mut curves = BTreeMap::new();
        for p in answer.profiles {
            let levels: Vec<f64> = p.curves.iter().map(|c| c.quantile).collect();
            let values = (0..p.seconds.len())
                .map(|t| p.curves.iter().map(|c| c.values[t]).collect())
                .collect();
            curves.insert(
                (p.service, p.resource),
                Curves {
                    seconds: p.seconds,
                    levels,
                    values,
                },
            );
        }
        Ok(Predicted {
            curves,
            model_version: answer.model_version,
        })
    }
}
