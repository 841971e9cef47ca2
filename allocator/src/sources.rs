//! Where the allocator's inputs come from: history from the collector
//! (`ExportSamples`, `GetTask`, `ListTasks`) and quantile curves from the
//! predictor (`PredictTask`), both over gRPC.

use std::collections::{BTreeMap, HashMap};

use headroom_proto::v1::{
    self, collector_client::CollectorClient, predictor_client::PredictorClient,
};
use tonic::{Code, Status, transport::Channel};

use crate::strategy::{Curves, Kind, Obs, Summary};

/// Summaries per (service, resource).
pub type Summaries = HashMap<(String, String), Summary>;

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    /// Id.
    pub id: String,
    /// Start, unix seconds.
    pub start: f64,
    /// End, unix seconds, when it ended.
    pub end: Option<f64>,
    /// Its mix of services, sorted.
    pub services: Vec<String>,
}

/// A timestamp as unix seconds.
pub fn seconds_of(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + t.nanos as f64 * 1e-9
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
        }),
        chunk_size: 0,
        provisioned,
    }
}

impl TaskInfo {
    fn from_proto(t: &v1::Task) -> Self {
        Self {
            id: t.id.clone(),
            start: t.start.as_ref().map_or(0.0, seconds_of),
            end: t.end.as_ref().map(seconds_of),
            services: t.services.clone(),
        }
    }
}

/// How long a task of `mix` is expected to run: the longest finished task
/// in `tasks` with exactly this mix, else the longest of them all. The
/// longest, not the mean: usage that grows over a task (memory) must be
/// covered to its end.
pub fn expected_duration(tasks: &[TaskInfo], mix: &[String]) -> Option<f64> {
    let done = || {
        tasks
            .iter()
            .filter_map(|t| t.end.map(|e| (e - t.start, t.services == mix)))
            .filter(|d| d.0 > 0.0)
    };
    let longest = |v: Vec<f64>| v.into_iter().reduce(f64::max);
    longest(done().filter(|d| d.1).map(|d| d.0).collect())
        .or_else(|| longest(done().map(|d| d.0).collect()))
}

/// Samples of several series, with the tasks they belong to.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Tasks referenced by the samples.
    pub tasks: Vec<TaskInfo>,
    /// Samples per (service, resource), in time order.
    pub series: BTreeMap<(String, String), Vec<Obs>>,
}

impl History {
    /// Samples of one series (empty when none).
    pub fn of(&self, service: &str, resource: &str) -> &[Obs] {
        self.series
            .get(&(service.to_string(), resource.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}

/// A collector's answer turned into the caller's error: an unknown name is
/// the caller's INVALID_ARGUMENT here, an unreachable collector UNAVAILABLE.
fn upstream(what: &str, s: Status) -> Status {
    match s.code() {
        Code::NotFound | Code::InvalidArgument => Status::invalid_argument(s.message().to_string()),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Status::unavailable(format!("{what} is unavailable: {}", s.message()))
        }
        _ => Status::new(s.code(), format!("{what}: {}", s.message())),
    }
}

/// Unix seconds as a timestamp.
pub fn timestamp(secs: f64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs.floor() as i64,
        nanos: ((secs - secs.floor()) * 1e9) as i32,
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
            client: CollectorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        }
    }

    /// One task.
    pub async fn task(&self, id: &str) -> Result<TaskInfo, Status> {
        let t = self
            .client
            .clone()
            .get_task(v1::GetTaskRequest { id: id.to_string() })
            .await
            .map_err(|s| upstream("the collector", s))?
            .into_inner();
        Ok(TaskInfo::from_proto(&t))
    }

    /// Tasks that ran `service`, started within `[start, end)` (unix
    /// seconds; unbounded when `None`), newest first.
    pub async fn tasks(
        &self,
        service: &str,
        start: Option<f64>,
        end: Option<f64>,
    ) -> Result<Vec<TaskInfo>, Status> {
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
                .map_err(|s| upstream("the collector", s))?
                .into_inner();
            out.extend(page.tasks.iter().map(TaskInfo::from_proto));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
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
    ) -> Result<History, Status> {
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
    ) -> Result<Summaries, Status> {
        let mut out = Summaries::new();
        let mut tasks: HashMap<String, u64> = HashMap::new();
        let request = export_request(services, resources, &[], start, end, false);
        self.each_chunk(request, |chunk| {
            for s in chunk.samples {
                let next = tasks.len() as u64;
                let task = *tasks.entry(s.task_id).or_insert(next);
                let kind = Kind::of(&s.resource);
                out.entry((s.service, s.resource))
                    .or_insert_with(|| Summary::new(kind, half_life))
                    .add(task, s.value, s.ts.as_ref().map_or(0.0, seconds_of));
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
    ) -> Result<(), Status> {
        let mut stream = self
            .client
            .clone()
            .export_samples(request)
            .await
            .map_err(|s| upstream("the collector", s))?
            .into_inner();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| upstream("the collector", s))?
        {
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
    ) -> Result<History, Status> {
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
    ) -> Result<History, Status> {
        let mut history = History::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let request = export_request(services, resources, task_ids, start, end, provisioned);
        self.each_chunk(request, |chunk| {
            for t in &chunk.tasks {
                index.entry(t.id.clone()).or_insert_with(|| {
                    history.tasks.push(TaskInfo::from_proto(t));
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
    /// Units per resource.
    pub units: HashMap<String, String>,
    /// Model version.
    pub model_version: String,
}

impl Predictor {
    /// A client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: PredictorClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        }
    }

    /// What the loaded model is.
    pub async fn info(&self) -> Result<v1::ModelInfoResponse, Status> {
        Ok(self
            .client
            .clone()
            .model_info(v1::ModelInfoRequest {})
            .await
            .map_err(|s| upstream("the predictor", s))?
            .into_inner())
    }

    /// Quantile curves for every service × resource of the mix `services`
    /// from 0 to `horizon` every `step` seconds.
    pub async fn task(
        &self,
        services: &[String],
        resources: &[String],
        horizon: f64,
        step: f64,
    ) -> Result<Predicted, Status> {
        let answer = self
            .client
            .clone()
            .predict_task(v1::PredictTaskRequest {
                task_services: services.to_vec(),
                resources: resources.to_vec(),
                horizon_seconds: horizon,
                step_seconds: step,
            })
            .await
            .map_err(|s| upstream("the predictor", s))?
            .into_inner();
        let mut curves = BTreeMap::new();
        let mut units = HashMap::new();
        for p in answer.profiles {
            let levels: Vec<f64> = p.curves.iter().map(|c| c.quantile).collect();
            let values = (0..p.seconds.len())
                .map(|t| p.curves.iter().map(|c| c.values[t]).collect())
                .collect();
            units.insert(p.resource.clone(), p.unit.clone());
            curves.insert(
                (p.service.clone(), p.resource.clone()),
                Curves {
                    seconds: p.seconds,
                    levels,
                    values,
                },
            );
        }
        Ok(Predicted {
            curves,
            units,
            model_version: answer.model_version,
        })
    }
}
