//! The allocator's domain: resolves a workload, gathers history or curves,
//! runs a strategy per service and resource, and places the result.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    backtest::{self, BacktestAsk, BacktestReport},
    error::{Error, Result},
    grpc::sources::{Collector, Predicted, Predictor},
    history::{expected_duration, now},
    params::{Overrides, Params},
    pressure,
    quantiles::curve_step,
    segments::Segment,
    snapshot::{self, Snapshot, Source},
    strategy::{self, Alloc, Strategy},
};

/// History the history-based strategies read by default, back from now.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(8 * 86_400);
/// Most services in one workload by default.
pub const DEFAULT_MAX_SERVICES: usize = 10_000;

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
            history: DEFAULT_HISTORY,
            max_services: DEFAULT_MAX_SERVICES,
            snapshot_every: None,
        }
    }
}

/// What a request allocates for: a stored task's mix, or services named.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    /// A stored task whose services are allocated for.
    pub task_id: Option<String>,
    /// Or these services.
    pub services: Vec<String>,
    /// Resources (cpu and memory when empty).
    pub resources: Vec<String>,
}

/// A workload resolved to names.
#[derive(Debug, Clone)]
pub(crate) struct Mix {
    pub(crate) services: Vec<String>,
    pub(crate) resources: Vec<String>,
}

/// One allocation of one service and resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The service.
    pub service: String,
    /// The resource's wire name.
    pub resource: String,
    /// The strategy that reached it.
    pub strategy: Strategy,
    /// Request, limit, expectations and how.
    pub alloc: Alloc,
    /// The model that drew the curves (empty for history-based ones).
    pub model_version: String,
}

/// A time-varying allocation of one service and resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePlan {
    /// The allocation at its peak and how it was reached.
    pub recommendation: Recommendation,
    /// Constant stretches covering the horizon, in time order.
    pub segments: Vec<Segment>,
}

/// Plans of every service and resource of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanReport {
    /// One per service and resource.
    pub plans: Vec<ResourcePlan>,
    /// The task duration planned for, in seconds.
    pub horizon_seconds: f64,
}

/// The allocator: its upstreams, options and history snapshot.
#[derive(Debug, Clone)]
pub struct Allocator {
    collector: Collector,
    predictor: Predictor,
    options: Arc<ServiceOptions>,
    snapshot: snapshot::Shared,
}

/// One allocation per (service, resource), and where the curves came from.
pub(crate) struct Allocated {
    pub(crate) allocs: Vec<(Recommendation, Vec<Segment>)>,
    pub(crate) horizon: f64,
}

impl Allocator {
    /// An allocator reading from `collector` and `predictor`.
    pub fn new(collector: Collector, predictor: Predictor, options: ServiceOptions) -> Self {
        Self {
            collector,
            predictor,
            options: Arc::new(options),
            snapshot: snapshot::Shared::default(),
        }
    }

    /// The collector this allocator reads.
    pub(crate) fn collector(&self) -> &Collector {
        &self.collector
    }

    /// Requests and limits of every service × resource of `workload`.
    pub async fn recommend(
        &self,
        workload: Workload,
        strategy: Strategy,
        params: &Overrides,
    ) -> Result<Vec<Recommendation>> {
        let params = Params::resolve(params, strategy)?;
        let mix = self.mix(workload).await?;
        let done = self.allocate(&mix, strategy, &params).await?;
        Ok(done.allocs.into_iter().map(|(r, _)| r).collect())
    }

    /// Time-varying plans of every service × resource of `workload`.
    pub async fn plan(&self, workload: Workload, params: &Overrides) -> Result<PlanReport> {
        let params = Params::resolve(params, Strategy::Plan)?;
        let mix = self.mix(workload).await?;
        let done = self.allocate(&mix, Strategy::Plan, &params).await?;
        Ok(PlanReport {
            plans: done
                .allocs
                .into_iter()
                .map(|(recommendation, segments)| ResourcePlan {
                    recommendation,
                    segments,
                })
                .collect(),
            horizon_seconds: done.horizon,
        })
    }

    /// Replays held-out tasks through the strategies (see [`backtest`]).
    pub async fn backtest(&self, ask: BacktestAsk) -> Result<BacktestReport> {
        backtest::run(
            &self.collector,
            &self.predictor,
            self.options.history.as_secs_f64(),
            ask,
        )
        .await
    }

    pub(crate) async fn mix(&self, w: Workload) -> Result<Mix> {
        let mut services = match w.task_id.filter(|id| !id.is_empty()) {
            Some(id) => self.collector.task(&id).await?.services,
            None => w.services,
        };
        services.sort();
        services.dedup();
        if services.is_empty() || services.iter().any(String::is_empty) {
            return Err(Error::NoServices);
        }
        if services.len() > self.options.max_services {
            return Err(Error::TooManyServices {
                count: services.len(),
                limit: self.options.max_services,
            });
        }
        let mut resources = if w.resources.is_empty() {
            crate::default_resources()
        } else {
            w.resources
        };
        resources.dedup();
        Ok(Mix {
            services,
            resources,
        })
    }

    /// The horizon: given, or the longest stored task with this mix (of
    /// tasks running its first service when none has it exactly).
    async fn horizon(&self, m: &Mix, params: &Params) -> Result<f64> {
        if let Some(h) = params.horizon_seconds {
            return Ok(h);
        }
        let tasks = self.collector.tasks(&m.services[0], None, None).await?;
        expected_duration(&tasks, &m.services).ok_or_else(|| Error::UnknownHorizon {
            service: m.services[0].clone(),
        })
    }

    /// Summaries of the mix's series: from the latest snapshot when it
    /// holds them all with this half-life, else read now.
    async fn summaries(&self, m: &Mix, params: &Params) -> Result<Source> {
        let half_life = params.half_life_seconds;
        if let Some(snap) =
            snapshot::covering(&self.snapshot, &m.services, &m.resources, half_life).await
        {
            return Ok(Source::Snapshot(snap));
        }
        let start = now() - self.options.history.as_secs_f64();
        // Pressure and limits come along: they correct the allocations.
        let mut resources = m.resources.clone();
        resources.extend(headroom_proto::resource::PRESSURE.map(String::from));
        Ok(Source::Read(
            self.collector
                .summaries(&m.services, &resources, Some(start), None, half_life)
                .await?,
        ))
    }

    /// Rebuilds the snapshot of every series' history every `every`, until
    /// `shutdown`; a failed rebuild keeps the previous snapshot.
    pub async fn keep_snapshot(self, every: Duration, shutdown: CancellationToken) {
        loop {
            let start = now() - self.options.history.as_secs_f64();
            let half_life = Params::default().half_life_seconds;
            match self
                .collector
                .summaries(&[], &[], Some(start), None, half_life)
                .await
            {
                Ok(series) => {
                    tracing::debug!(series = series.len(), "history snapshot rebuilt");
                    *self.snapshot.write().await = Some(Arc::new(Snapshot {
                        built: std::time::Instant::now(),
                        series,
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "history snapshot not rebuilt"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn curves(&self, m: &Mix, params: &Params) -> Result<(Predicted, f64)> {
        let horizon = self.horizon(m, params).await?;
        let predicted = self
            .predictor
            .task(&m.services, &m.resources, horizon, curve_step(horizon))
            .await?;
        Ok((predicted, horizon))
    }

    /// Runs `strategy` for every service × resource of `m`.
    pub(crate) async fn allocate(
        &self,
        m: &Mix,
        strategy: Strategy,
        params: &Params,
    ) -> Result<Allocated> {
        let recommendation =
            |service: &str, resource: &str, alloc, model_version: &str| Recommendation {
                service: service.to_string(),
                resource: resource.to_string(),
                strategy,
                alloc,
                model_version: model_version.to_string(),
            };
        let mut allocs = Vec::new();
        match strategy {
            Strategy::Max | Strategy::Percentile => {
                let source = self.summaries(m, params).await?;
                for service in &m.services {
                    for resource in &m.resources {
                        let key = (service.clone(), resource.clone());
                        let Some(summary) = source.summaries().get(&key) else {
                            return Err(Error::NoHistory {
                                service: service.clone(),
                                resource: resource.clone(),
                                window: humantime::format_duration(self.options.history)
                                    .to_string(),
                                strategy: strategy.name(),
                            });
                        };
                        let mut a = if strategy == Strategy::Max {
                            strategy::max(summary, params)
                        } else {
                            strategy::percentile(summary, params)
                        };
                        let of =
                            |r: &str| source.summaries().get(&(service.clone(), r.to_string()));
                        use headroom_proto::resource as res;
                        match resource.as_str() {
                            res::MEMORY => pressure::after_oom_kills(
                                &mut a,
                                summary,
                                of(res::OOM_KILLS),
                                of(res::MEMORY_LIMIT),
                            ),
                            res::CPU => pressure::after_throttling(
                                &mut a,
                                of(res::CPU_THROTTLED),
                                of(res::CPU_LIMIT),
                            ),
                            _ => {}
                        }
                        pressure::name_skew(&mut a, summary);
                        a.detail.push_str(&source.note());
                        allocs.push((recommendation(service, resource, a, ""), Vec::new()));
                    }
                }
                Ok(Allocated {
                    allocs,
                    horizon: 0.0,
                })
            }
            Strategy::Predictive | Strategy::Plan => {
                let (predicted, horizon) = self.curves(m, params).await?;
                let version = &predicted.model_version;
                for ((service, resource), curves) in &predicted.curves {
                    let (segments, a) = if strategy == Strategy::Plan {
                        strategy::plan(curves, horizon, params)
                    } else {
                        (Vec::new(), strategy::predictive(curves, params))
                    };
                    allocs.push((recommendation(service, resource, a, version), segments));
                }
                Ok(Allocated { allocs, horizon })
            }
            Strategy::Provisioned => Err(Error::StrategyNotHere {
                strategy: strategy.name(),
                why: "replays what an imported trace allocated; it exists only in backtests",
            }),
        }
    }
}
