//! The agent's running state and its two faces: the sampling loop (one tick
//! per interval, aligned to the wall clock) and the `headroom.v1.Agent`
//! gRPC service that changes and reports that state.
//!
//! A watched target is one instance of a service: every discovered
//! container or pod is its own (named as [`Discovery`] says); a configured
//! or API target is the service's one instance on this host, published
//! with an empty instance, which means the host. Records are keyed by
//! service, so one service's series keep their order in one partition.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use headroom_proto::{
    time::from_unix_ms,
    v1::{self, agent_server::Agent, usage_message::Body},
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    delivery::Publisher,
    sampling::{Discovery, Sampler, Selector, cgroup::Layout},
    targets::TargetSpec,
};

/// (service, instance): what a watched target is known by.
type Key = (String, String);

/// A watched target and what it last measured.
#[derive(Debug)]
struct Watched {
    spec: TargetSpec,
    /// The replica its samples carry; empty for the host.
    instance: String,
    source: v1::TargetSource,
    last_at_ms: Option<i64>,
    last: Vec<(&'static str, f64)>,
    processes: u32,
    error: Option<String>,
    sequence: u64,
    last_tick: Option<Instant>,
}

/// Everything the loop and the API share.
#[derive(Debug)]
pub(crate) struct State {
    host: String,
    interval: Duration,
    topic: String,
    targets: BTreeMap<Key, Watched>,
    tasks: BTreeMap<String, v1::Task>,
    /// The task of services outside any started task: this agent run.
    idle_task: v1::Task,
    /// Container discovery and how often it runs.
    discovery: Option<(Discovery, Duration)>,
    last_discovery: Option<Instant>,
    /// Targets removed since the last tick, whose counters go too.
    forgotten: Vec<Key>,
    /// The host's cgroup hierarchy, as `Status` reports it.
    layout: &'static str,
}

impl State {
    /// State for `host` with the given targets.
    pub(crate) fn new(
        host: String,
        interval: Duration,
        topic: String,
        targets: Vec<TargetSpec>,
        discovery: Option<(Discovery, Duration)>,
    ) -> Self {
        let now = now_ms();
        let idle_task = v1::Task {
            id: format!("{host}-{}", now / 1000),
            start: Some(from_unix_ms(now)),
            end: None,
            services: Vec::new(),
        };
        let mut state = Self {
            host,
            interval,
            topic,
            targets: BTreeMap::new(),
            tasks: BTreeMap::new(),
            idle_task,
            discovery,
            last_discovery: None,
            forgotten: Vec::new(),
            layout: Layout::host().name(),
        };
        for spec in targets {
            // One target per service: the host's instance.
            state.insert(spec, String::new(), v1::TargetSource::Config);
        }
        state.discover();
        state
    }

    /// Rescans the cgroup root when discovery is due: new containers are
    /// watched, vanished ones dropped, each its own instance. Configured
    /// and API targets win over discovered containers of the same service.
    fn discover(&mut self) {
        let Some((discovery, every)) = &self.discovery else {
            return;
        };
        if self.last_discovery.is_some_and(|t| t.elapsed() < *every) {
            return;
        }
        self.last_discovery = Some(Instant::now());
        let found = discovery.scan();
        let gone: Vec<Key> = self
            .targets
            .iter()
            .filter(|(key, w)| {
                w.source == v1::TargetSource::Discovered
                    && !matches!(
                        (&w.spec.selector, found.get(*key)),
                        (Selector::Cgroup(dir), Some(now)) if dir == now
                    )
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            tracing::info!(service = %key.0, instance = %key.1, "discovered container gone");
            self.targets.remove(&key);
            self.forgotten.push(key);
        }
        for ((service, instance), dir) in found {
            let key = (service, instance);
            let configured = self
                .instances(&key.0)
                .any(|(_, w)| w.source != v1::TargetSource::Discovered);
            if configured || self.targets.contains_key(&key) {
                continue;
            }
            let (service, instance) = key;
            tracing::info!(
                service,
                instance,
                cgroup = %dir.display(),
                "container discovered"
            );
            self.insert(
                TargetSpec {
                    service,
                    selector: Selector::Cgroup(dir),
                },
                instance,
                v1::TargetSource::Discovered,
            );
        }
    }

    /// The watched instances of `service`.
    fn instances<'a>(&'a self, service: &'a str) -> impl Iterator<Item = (&'a Key, &'a Watched)> {
        self.targets
            .range((service.to_string(), String::new())..)
            .take_while(move |((s, _), _)| s == service)
    }

    /// Stops watching every instance of `service`; false when none was.
    fn remove_service(&mut self, service: &str) -> bool {
        let keys: Vec<Key> = self.instances(service).map(|(k, _)| k.clone()).collect();
        for key in &keys {
            self.targets.remove(key);
        }
        let any = !keys.is_empty();
        self.forgotten.extend(keys);
        any
    }

    /// Starts a task over watched services (from the API or the flags).
    pub(crate) fn start_task(
        &mut self,
        id: String,
        services: Vec<String>,
        start: Option<prost_types::Timestamp>,
    ) -> Result<v1::Task, Status> {
        if services.is_empty() {
            return Err(Status::invalid_argument(
                "a task needs at least one service",
            ));
        }
        let unknown: Vec<&String> = services
            .iter()
            .filter(|s| self.instances(s).next().is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(Status::invalid_argument(format!(
                "services not watched by this agent: {unknown:?}"
            )));
        }
        if let Some(busy) = services
            .iter()
            .find(|s| self.tasks.values().any(|t| t.services.contains(s)))
        {
            return Err(Status::failed_precondition(format!(
                "service {busy:?} already runs in another task"
            )));
        }
        let id = if id.is_empty() {
            format!("{}-{}", self.host, now_ms())
        } else {
            id
        };
        if self.tasks.contains_key(&id) {
            return Err(Status::already_exists(format!(
                "task {id:?} is already running"
            )));
        }
        let mut services = services;
        services.sort();
        services.dedup();
        let task = v1::Task {
            id: id.clone(),
            start: Some(start.unwrap_or_else(|| from_unix_ms(now_ms()))),
            end: None,
            services,
        };
        self.tasks.insert(id, task.clone());
        tracing::info!(task = %task.id, "task started");
        Ok(task)
    }

    /// The Kafka record announcing a task's start or end.
    pub(crate) fn task_record(&self, task: &v1::Task) -> (String, Vec<u8>) {
        let payload = v1::UsageMessage {
            body: Some(Body::Task(v1::TaskEvent {
                task: Some(task.clone()),
                host: self.host.clone(),
            })),
        }
        .encode_to_vec();
        (task.id.clone(), payload)
    }

    fn insert(&mut self, spec: TargetSpec, instance: String, source: v1::TargetSource) {
        self.targets.insert(
            (spec.service.clone(), instance.clone()),
            Watched {
                spec,
                instance,
                source,
                last_at_ms: None,
                last: Vec::new(),
                processes: 0,
                error: None,
                sequence: 0,
                last_tick: None,
            },
        );
    }

    fn task_of(&self, service: &str) -> &v1::Task {
        self.tasks
            .values()
            .find(|t| t.services.iter().any(|s| s == service))
            .unwrap_or(&self.idle_task)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The sampling loop: every interval (aligned to the wall clock) measures
/// every target and publishes one record per service.
pub(crate) async fn sample_loop(
    state: Arc<Mutex<State>>,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let sampler = Arc::new(Mutex::new(Sampler::new()));
    let interval_ms = state
        .lock()
        .expect("state lock")
        .interval
        .as_millis()
        .max(1) as i64;
    loop {
        let now = now_ms();
        let next = (now / interval_ms + 1) * interval_ms;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
        }
        let state = state.clone();
        let sampler = sampler.clone();
        // Reading /proc for many processes is blocking work.
        let records = tokio::task::spawn_blocking(move || tick(&state, &sampler, next)).await;
        match records {
            Ok(records) => {
                for (key, payload) in records {
                    publisher.publish(&key, payload);
                }
            }
            Err(e) => tracing::error!(error = %e, "sampling tick panicked"),
        }
    }
}

/// One tick: measures every target, returns the records to publish.
fn tick(state: &Mutex<State>, sampler: &Mutex<Sampler>, ts_ms: i64) -> Vec<(String, Vec<u8>)> {
    let mut sampler = sampler.lock().expect("sampler lock");
    let mut state = state.lock().expect("state lock");
    state.discover();
    // Containers are read from their cgroups; only process targets need
    // the process table.
    if state
        .targets
        .values()
        .any(|w| !matches!(w.spec.selector, Selector::Cgroup(_)))
    {
        sampler.refresh();
    }
    for key in std::mem::take(&mut state.forgotten) {
        sampler.forget(&counter_key(&key));
    }
    let host = state.host.clone();
    let keys: Vec<Key> = state.targets.keys().cloned().collect();
    let mut records = Vec::new();
    for key in keys {
        let service = &key.0;
        let task = state.task_of(service).clone();
        let Some(w) = state.targets.get_mut(&key) else {
            continue;
        };
        let now = Instant::now();
        let elapsed = w
            .last_tick
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        match sampler.measure(&counter_key(&key), &w.spec.selector, elapsed) {
            Ok(m) => {
                if w.error.take().is_some() {
                    tracing::info!(service, instance = %w.instance, "target sampled again");
                }
                w.last_tick = Some(now);
                w.last_at_ms = Some(ts_ms);
                w.processes = m.processes as u32;
                w.last = m.values.clone();
                w.sequence += 1;
                let usage = v1::ServiceUsage {
                    host: host.clone(),
                    service: service.clone(),
                    task_id: task.id.clone(),
                    task_start: task.start,
                    ts: Some(from_unix_ms(ts_ms)),
                    measurements: measurements(&m.values),
                    interval_seconds: elapsed,
                    sequence: w.sequence,
                    task_services: task.services.clone(),
                    instance: w.instance.clone(),
                };
                let payload = v1::UsageMessage {
                    body: Some(Body::Usage(usage)),
                }
                .encode_to_vec();
                // By service: a series (service, instance) stays in one
                // partition, in order, and so does the whole service.
                records.push((service.clone(), payload));
            }
            Err(e) => {
                let message = e.to_string();
                if w.error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        service,
                        instance = %w.instance,
                        error = %message,
                        "target not sampled"
                    );
                }
                w.error = Some(message);
                w.last_tick = None;
            }
        }
    }
    records
}

/// The `Status` response header naming the host's cgroup layout (`v1`,
/// `v2` or `none`).
pub const LAYOUT_HEADER: &str = "headroom-cgroup-layout";

/// The `headroom.v1.Agent` service.
#[derive(Debug, Clone)]
pub(crate) struct AgentApi {
    state: Arc<Mutex<State>>,
    publisher: Publisher,
}

impl AgentApi {
    /// The service over the shared state.
    pub(crate) fn new(state: Arc<Mutex<State>>, publisher: Publisher) -> Self {
        Self { state, publisher }
    }

    fn publish_task(&self, record: (String, Vec<u8>)) {
        let (key, payload) = record;
        self.publisher.publish(&key, payload);
    }
}

/// What the sampler keeps a target's counters under: one per instance
/// (service names hold no control characters).
fn counter_key((service, instance): &Key) -> String {
    format!("{service}\n{instance}")
}

/// (resource, value) pairs as the wire carries them.
fn measurements(values: &[(&'static str, f64)]) -> Vec<v1::Measurement> {
    values
        .iter()
        .map(|(r, v)| v1::Measurement {
            resource: (*r).to_string(),
            value: *v,
        })
        .collect()
}

fn status_of(w: &Watched, task_id: &str) -> v1::TargetStatus {
    v1::TargetStatus {
        target: Some(w.spec.to_proto()),
        source: w.source as i32,
        processes: w.processes,
        error: w.error.clone().unwrap_or_default(),
        last_sample_at: w.last_at_ms.map(from_unix_ms),
        last_sample: measurements(&w.last),
        task_id: task_id.to_string(),
        instance: w.instance.clone(),
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let (buffered, spooled, spool_bytes) = self.publisher.depth();
        let stats = &self.publisher.stats;
        let state = self.state.lock().expect("state lock");
        let targets = state
            .targets
            .values()
            .map(|w| status_of(w, &state.task_of(&w.spec.service).id))
            .collect();
        let broker = if stats.broker_up.load(std::sync::atomic::Ordering::Relaxed) {
            v1::BrokerState::Up
        } else {
            v1::BrokerState::Down
        };
        let mut response = Response::new(v1::StatusResponse {
            host: state.host.clone(),
            targets,
            tasks: state.tasks.values().cloned().collect(),
            buffered,
            spooled,
            spool_bytes,
            dropped: stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            delivered: stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            broker: broker as i32,
            interval_seconds: state.interval.as_secs_f64(),
            topic: state.topic.clone(),
            cgroup_layout: state.layout.to_string(),
        });
        // Also as a response header, for clients that read only metadata.
        response.metadata_mut().insert(
            LAYOUT_HEADER,
            tonic::metadata::MetadataValue::from_static(state.layout),
        );
        Ok(response)
    }

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<v1::WatchResponse>, Status> {
        let target = request.into_inner().target.ok_or_else(|| {
            Status::invalid_argument(
                "target is missing: give a service and a pid, name, cmd or cgroup",
            )
        })?;
        let spec =
            TargetSpec::from_proto(&target).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut state = self.state.lock().expect("state lock");
        let service = spec.service.clone();
        // The API's target replaces every instance of the service.
        state.remove_service(&service);
        state.insert(spec, String::new(), v1::TargetSource::Api);
        tracing::info!(service, "target watched");
        let task = state.task_of(&service).id.clone();
        let key = (service, String::new());
        Ok(Response::new(v1::WatchResponse {
            status: state.targets.get(&key).map(|w| status_of(w, &task)),
        }))
    }

    async fn unwatch(
        &self,
        request: Request<v1::UnwatchRequest>,
    ) -> Result<Response<v1::UnwatchResponse>, Status> {
        let service = request.into_inner().service;
        let mut state = self.state.lock().expect("state lock");
        if !state.remove_service(&service) {
            return Err(Status::not_found(format!(
                "no target for service {service:?}"
            )));
        }
        tracing::info!(service, "target unwatched");
        Ok(Response::new(v1::UnwatchResponse {}))
    }

    async fn start_task(
        &self,
        request: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::StartTaskResponse>, Status> {
        let r = request.into_inner();
        let (task, record) = {
            let mut state = self.state.lock().expect("state lock");
            let task = state.start_task(r.id, r.services, r.start)?;
            let record = state.task_record(&task);
            (task, record)
        };
        self.publish_task(record);
        Ok(Response::new(v1::StartTaskResponse { task: Some(task) }))
    }

    async fn end_task(
        &self,
        request: Request<v1::EndTaskRequest>,
    ) -> Result<Response<v1::EndTaskResponse>, Status> {
        let id = request.into_inner().id;
        let (task, record) = {
            let mut state = self.state.lock().expect("state lock");
            let Some(mut task) = state.tasks.remove(&id) else {
                return Err(Status::not_found(format!("no running task {id:?}")));
            };
            task.end = Some(from_unix_ms(now_ms()));
            let record = state.task_record(&task);
            (task, record)
        };
        self.publish_task(record);
        tracing::info!(task = %task.id, "task ended");
        Ok(Response::new(v1::EndTaskResponse { task: Some(task) }))
    }
}
