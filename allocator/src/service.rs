//! `headroom.v1.Allocator` over the strategies: resolves the workload,
//! gathers history from the collector or curves from the predictor, and
//! answers with allocations, plans or placements.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use headroom_proto::v1::{self, allocator_server::Allocator};
use tonic::{Request, Response, Status};

use crate::{
    place::{self, Demand, Node},
    sources::{Collector, Predicted, Predictor, Summaries, expected_duration},
    strategy::{self, Alloc, Kind, Params, Segment, Strategy},
};

/// Points a predicted curve is drawn with over the horizon.
pub const CURVE_POINTS: f64 = 120.0;

/// What the service needs besides its upstreams.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// History the history-based strategies read, back from now.
    pub history: Duration,
    /// Most services in one workload.
    pub max_services: usize,
    /// How often the snapshot of every series' history (which answers
    /// history-based requests without reading samples) is rebuilt; `None`:
    /// no snapshot, every request reads its history.
    pub snapshot_every: Option<Duration>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            history: Duration::from_secs(8 * 86_400),
            max_services: 10_000,
            snapshot_every: None,
        }
    }
}

/// The allocator's gRPC service.
#[derive(Debug, Clone)]
pub struct AllocatorApi {
    collector: Collector,
    predictor: Predictor,
    options: Arc<ServiceOptions>,
    snapshot: Arc<RwLock<Option<Arc<Snapshot>>>>,
}

/// Every series' history summarised, as of `built`.
#[derive(Debug)]
struct Snapshot {
    built: std::time::Instant,
    series: Summaries,
}

/// Where a history-based answer's samples came from.
enum Source {
    Snapshot(Arc<Snapshot>),
    Read(Summaries),
}

impl Source {
    fn summaries(&self) -> &Summaries {
        match self {
            Self::Snapshot(s) => &s.series,
            Self::Read(s) => s,
        }
    }

    fn note(&self) -> String {
        match self {
            Self::Snapshot(s) => format!(
                " (from the history snapshot of {:.0} s ago)",
                s.built.elapsed().as_secs_f64()
            ),
            Self::Read(_) => String::new(),
        }
    }
}

/// A workload resolved to names.
#[derive(Debug, Clone)]
struct Workload {
    services: Vec<String>,
    resources: Vec<String>,
}

/// The unit of a resource's values.
pub fn unit(resource: &str) -> &'static str {
    match Kind::of(resource) {
        Kind::Cpu => "cores",
        Kind::Memory => "bytes",
        Kind::Io => "bytes/s",
    }
}

fn invalid(m: impl Into<String>) -> Status {
    Status::invalid_argument(m.into())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One allocation per (service, resource), the curves it came from.
struct Allocated {
    allocs: Vec<(String, String, Alloc, Vec<Segment>)>,
    model_version: String,
    horizon: f64,
}

impl AllocatorApi {
    /// A service reading from `collector` and `predictor`.
    pub fn new(collector: Collector, predictor: Predictor, options: ServiceOptions) -> Self {
        Self {
            collector,
            predictor,
            options: Arc::new(options),
            snapshot: Arc::default(),
        }
    }

    async fn workload(&self, w: Option<v1::Workload>) -> Result<Workload, Status> {
        let w = w.unwrap_or_default();
        let mut services = if !w.task_id.is_empty() {
            self.collector.task(&w.task_id).await?.services
        } else {
            w.services
        };
        services.sort();
        services.dedup();
        if services.is_empty() || services.iter().any(String::is_empty) {
            return Err(invalid(
                "the workload names no services: give a task_id or a non-empty list of services",
            ));
        }
        if services.len() > self.options.max_services {
            return Err(invalid(format!(
                "the workload names {} services, more than the limit of {}",
                services.len(),
                self.options.max_services
            )));
        }
        let mut resources = if w.resources.is_empty() {
            vec!["cpu".to_string(), "memory".to_string()]
        } else {
            w.resources
        };
        resources.dedup();
        Ok(Workload {
            services,
            resources,
        })
    }

    /// The horizon: given, or the longest stored task with this mix (of
    /// tasks running its first service when none has it exactly).
    async fn horizon(&self, w: &Workload, params: &Params) -> Result<f64, Status> {
        if let Some(h) = params.horizon_seconds {
            return Ok(h);
        }
        let tasks = self.collector.tasks(&w.services[0], None, None).await?;
        expected_duration(&tasks, &w.services).ok_or_else(|| {
            invalid(format!(
                "no finished task ran {:?}, so the task's duration is unknown: give params.horizon_seconds",
                w.services[0]
            ))
        })
    }

    /// Summaries of the workload's series: from the latest snapshot when
    /// it holds them all with this half-life, else read now.
    async fn summaries(&self, w: &Workload, params: &Params) -> Result<Source, Status> {
        if let Some(snap) = self.snapshot.read().await.clone() {
            let covered = w.services.iter().all(|s| {
                w.resources
                    .iter()
                    .all(|r| snap.series.contains_key(&(s.clone(), r.clone())))
            });
            let same_decay = snap
                .series
                .values()
                .next()
                .is_none_or(|x| x.half_life() == params.half_life_seconds);
            if covered && same_decay {
                return Ok(Source::Snapshot(snap));
            }
        }
        let end = now();
        Ok(Source::Read(
            self.collector
                .summaries(
                    &w.services,
                    &w.resources,
                    Some(end - self.options.history.as_secs_f64()),
                    None,
                    params.half_life_seconds,
                )
                .await?,
        ))
    }

    /// Rebuilds the snapshot of every series' history every `every`, until
    /// `shutdown`; a failed rebuild keeps the previous snapshot.
    pub async fn keep_snapshot(self, every: Duration, shutdown: CancellationToken) {
        loop {
            let end = now();
            let built = self
                .collector
                .summaries(
                    &[],
                    &[],
                    Some(end - self.options.history.as_secs_f64()),
                    None,
                    Params::default().half_life_seconds,
                )
                .await;
            match built {
                Ok(series) => {
                    tracing::debug!(series = series.len(), "history snapshot rebuilt");
                    *self.snapshot.write().await = Some(Arc::new(Snapshot {
                        built: std::time::Instant::now(),
                        series,
                    }));
                }
                Err(e) => tracing::warn!(error = %e.message(), "history snapshot not rebuilt"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn curves(&self, w: &Workload, params: &Params) -> Result<(Predicted, f64), Status> {
        let horizon = self.horizon(w, params).await?;
        let step = (horizon / CURVE_POINTS).max(1.0);
        let predicted = self
            .predictor
            .task(&w.services, &w.resources, horizon, step)
            .await?;
        Ok((predicted, horizon))
    }

    /// Runs `strategy` for every service × resource of `w`.
    async fn allocate(
        &self,
        w: &Workload,
        strategy: Strategy,
        params: &Params,
    ) -> Result<Allocated, Status> {
        let mut allocs = Vec::new();
        match strategy {
            Strategy::Max | Strategy::Percentile => {
                let source = self.summaries(w, params).await?;
                let summaries = source.summaries();
                for service in &w.services {
                    for resource in &w.resources {
                        let Some(summary) = summaries.get(&(service.clone(), resource.clone()))
                        else {
                            return Err(Status::failed_precondition(format!(
                                "no history of {service}/{resource} in the last {}: {strategy} needs samples",
                                humantime::format_duration(self.options.history),
                            )));
                        };
                        let mut a = if strategy == Strategy::Max {
                            strategy::max(summary, params)
                        } else {
                            strategy::percentile(summary, params)
                        };
                        a.detail.push_str(&source.note());
                        allocs.push((service.clone(), resource.clone(), a, Vec::new()));
                    }
                }
                Ok(Allocated {
                    allocs,
                    model_version: String::new(),
                    horizon: 0.0,
                })
            }
            Strategy::Predictive | Strategy::Plan => {
                let (predicted, horizon) = self.curves(w, params).await?;
                for ((service, resource), curves) in &predicted.curves {
                    let (segments, a) = if strategy == Strategy::Plan {
                        strategy::plan(curves, horizon, params)
                    } else {
                        (Vec::new(), strategy::predictive(curves, params))
                    };
                    allocs.push((service.clone(), resource.clone(), a, segments));
                }
                Ok(Allocated {
                    allocs,
                    model_version: predicted.model_version,
                    horizon,
                })
            }
            Strategy::Provisioned => Err(invalid(
                "strategy \"provisioned\" replays what an imported trace allocated; it exists only in backtests",
            )),
        }
    }
}

fn explanation(strategy: Strategy, a: &Alloc, model_version: &str) -> v1::Explanation {
    v1::Explanation {
        strategy: strategy.name().to_string(),
        samples_used: a.samples_used,
        model_version: model_version.to_string(),
        detail: a.detail.clone(),
    }
}

fn parse_strategy(name: &str, default: Strategy) -> Result<Strategy, Status> {
    if name.is_empty() {
        return Ok(default);
    }
    name.parse().map_err(invalid)
}

#[tonic::async_trait]
impl Allocator for AllocatorApi {
    async fn recommend(
        &self,
        request: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        let r = request.into_inner();
        let strategy = parse_strategy(&r.strategy, Strategy::Percentile)?;
        let params = Params::resolve(r.params.as_ref(), strategy).map_err(invalid)?;
        let w = self.workload(r.workload).await?;
        let done = self.allocate(&w, strategy, &params).await?;
        Ok(Response::new(v1::RecommendResponse {
            allocations: done
                .allocs
                .iter()
                .map(|(service, resource, a, _)| v1::Allocation {
                    service: service.clone(),
                    resource: resource.clone(),
                    request: a.request,
                    limit: a.limit,
                    expected_slack: a.expected_slack,
                    violation_risk: a.violation_risk,
                    unit: unit(resource).to_string(),
                    explanation: Some(explanation(strategy, a, &done.model_version)),
                })
                .collect(),
        }))
    }

    async fn plan(
        &self,
        request: Request<v1::PlanRequest>,
    ) -> Result<Response<v1::PlanResponse>, Status> {
        let r = request.into_inner();
        let params = Params::resolve(r.params.as_ref(), Strategy::Plan).map_err(invalid)?;
        let w = self.workload(r.workload).await?;
        let done = self.allocate(&w, Strategy::Plan, &params).await?;
        Ok(Response::new(v1::PlanResponse {
            plans: done
                .allocs
                .iter()
                .map(|(service, resource, a, segments)| v1::ResourcePlan {
                    service: service.clone(),
                    resource: resource.clone(),
                    segments: segments
                        .iter()
                        .map(|s| v1::Segment {
                            start_seconds: s.start,
                            end_seconds: s.end,
                            request: s.request,
                            limit: s.limit,
                        })
                        .collect(),
                    unit: unit(resource).to_string(),
                    explanation: Some(explanation(Strategy::Plan, a, &done.model_version)),
                })
                .collect(),
            horizon_seconds: done.horizon,
        }))
    }

    async fn place(
        &self,
        request: Request<v1::PlaceRequest>,
    ) -> Result<Response<v1::PlaceResponse>, Status> {
        let r = request.into_inner();
        let planned = r.mode() == v1::PlacementMode::Planned;
        let strategy = if planned {
            Strategy::Plan
        } else {
            parse_strategy(&r.strategy, Strategy::Percentile)?
        };
        let solver = match r.solver() {
            v1::Solver::Unspecified => place::Solver::Auto,
            v1::Solver::Exact => place::Solver::Exact,
            v1::Solver::Heuristic => place::Solver::Heuristic,
        };
        let nodes: Vec<Node> = r
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                cpu: n.cpu_cores,
                memory: n.memory_bytes,
            })
            .collect();
        let params = Params::resolve(r.params.as_ref(), strategy).map_err(invalid)?;
        let mut w = self.workload(r.workload).await?;
        w.resources = vec!["cpu".into(), "memory".into()];
        // Validate the nodes before asking anyone for numbers.
        place::heuristic(
            &nodes,
            &[Demand {
                service: String::new(),
                cpu: vec![0.0],
                memory: vec![0.0],
            }],
        )
        .map_err(|e| invalid(e.to_string()))?;
        let done = self.allocate(&w, strategy, &params).await?;
        let mut per: BTreeMap<&str, (Vec<f64>, Vec<f64>, Vec<f64>)> = BTreeMap::new();
        let (seconds, moments): (Vec<f64>, usize) = if planned {
            let step = done.horizon / CURVE_POINTS;
            let s: Vec<f64> = (0..=CURVE_POINTS as usize)
                .map(|i| i as f64 * step)
                .collect();
            let n = s.len();
            (s, n)
        } else {
            (vec![0.0], 1)
        };
        for (service, resource, a, segments) in &done.allocs {
            let e = per
                .entry(service.as_str())
                .or_insert_with(|| (vec![0.0; moments], vec![0.0; moments], Vec::new()));
            let at = |t: f64| {
                if segments.is_empty() {
                    a.request
                } else {
                    segments
                        .iter()
                        .find(|s| t >= s.start && t < s.end)
                        .or(segments.last())
                        .map_or(a.request, |s| s.request)
                }
            };
            let values: Vec<f64> = seconds.iter().map(|t| at(*t)).collect();
            match resource.as_str() {
                "cpu" => e.0 = values,
                _ => e.1 = values,
            }
        }
        let demands: Vec<Demand> = per
            .into_iter()
            .map(|(s, (cpu, memory, _))| Demand {
                service: s.to_string(),
                cpu,
                memory,
            })
            .collect();
        let placement = tokio::task::spawn_blocking({
            let (nodes, demands) = (nodes.clone(), demands.clone());
            move || place::place(&nodes, &demands, solver)
        })
        .await
        .map_err(|e| Status::internal(format!("placement panicked: {e}")))?
        .map_err(|e| invalid(e.to_string()))?;
        let used: Vec<usize> = {
            let mut u: Vec<usize> = placement.node.iter().flatten().copied().collect();
            u.sort_unstable();
            u.dedup();
            u
        };
        Ok(Response::new(v1::PlaceResponse {
            assignments: demands
                .iter()
                .zip(&placement.node)
                .filter_map(|(d, n)| {
                    n.map(|n| v1::Assignment {
                        service: d.service.clone(),
                        node: nodes[n].name.clone(),
                    })
                })
                .collect(),
            nodes_used: used.len() as u32,
            headroom: used
                .iter()
                .map(|&n| v1::NodeHeadroom {
                    node: nodes[n].name.clone(),
                    points: placement
                        .headroom(n, &nodes, &demands)
                        .iter()
                        .zip(&seconds)
                        .map(|((cpu, mem), s)| v1::HeadroomPoint {
                            seconds: *s,
                            cpu_free: *cpu,
                            memory_free: *mem,
                        })
                        .collect(),
                })
                .collect(),
            unplaced: demands
                .iter()
                .zip(&placement.node)
                .filter(|(_, n)| n.is_none())
                .map(|(d, _)| d.service.clone())
                .collect(),
            solver: placement.solver.to_string(),
        }))
    }

    async fn backtest(
        &self,
        request: Request<v1::BacktestRequest>,
    ) -> Result<Response<v1::BacktestResponse>, Status> {
        crate::backtest::run(
            &self.collector,
            &self.predictor,
            self.options.history.as_secs_f64(),
            request.into_inner(),
        )
        .await
        .map(Response::new)
    }
}
