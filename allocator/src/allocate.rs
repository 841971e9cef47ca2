//! The allocator's domain: resolves a workload, gathers history or curves,
//! runs a strategy per service and resource, and places the result.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    backtest::{self, BacktestAsk, BacktestReport},
    calibrate,
    error::{Error, Result},
    grpc::sources::{Collector, ModelInfo, Predictor},
    history::{TaskInfo, expected_duration, now},
    params::{Overrides, Params},
    pressure,
    quantiles::curve_step,
    replay::{self, ModelCandidates, ModelWin},
    segments::Segment,
    snapshot::{self, Snapshot, Source},
    strategy::{self, Alloc, Strategy, Summary},
};

/// History the history-based strategies read by default, back from now.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(8 * 86_400);
/// How long the snapshot keeps `auto`'s model candidates before it
/// evaluates them again (sooner when the served model changes).
pub const MODEL_CANDIDATES_EVERY: Duration = Duration::from_secs(600);
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
    /// The strategy that reached it (the fallback's when it fell back).
    pub strategy: Strategy,
    /// Request, limit, expectations and how (zeros when unanswered).
    pub alloc: Alloc,
    /// The model that drew the curves (empty for history-based ones).
    pub model_version: String,
    /// Set when the strategy asked could not answer this series and the
    /// history-based one did.
    pub fallback: Option<Fallback>,
    /// Set when nothing could answer this series (on the wire:
    /// FAILED_PRECONDITION for it alone), with why.
    pub unanswered: Option<String>,
}

/// Why a series was answered by another strategy than the one asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// The strategy asked.
    pub from: Strategy,
    /// Why it could not answer.
    pub reason: String,
}

/// The strategy a model-based one falls back to, per series.
pub const FALLBACK_STRATEGY: Strategy = Strategy::Percentile;

/// `params` as the fallback strategy takes them: its own default margin.
pub fn fallback_params(params: &Params) -> Params {
    Params {
        margin: Params::default().margin,
        ..params.clone()
    }
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
        if services.is_empty() {
            return Err(Error::NoServices);
        }
        if services.iter().any(String::is_empty) {
            return Err(Error::EmptyName {
                field: "services",
                what: "service",
            });
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
        check_resources(&resources)?;
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
        if let Some(h) = expected_duration(&tasks, &m.services) {
            return Ok(h);
        }
        // A service the collector never stored is not there, whatever the
        // duration: say that first.
        let stored = self.collector.replicas().await?;
        if let Some(absent) = m.services.iter().find(|s| !stored.contains_key(*s)) {
            let mut known: Vec<String> = stored.into_keys().collect();
            known.sort();
            known.truncate(50);
            return Err(Error::UnknownService {
                service: absent.clone(),
                known: known.join(", "),
            });
        }
        Err(Error::UnknownHorizon {
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
                    let previous = self.snapshot.read().await.clone();
                    let (models, models_at) = self.snapshot_models(&series, previous).await;
                    tracing::debug!(
                        series = series.len(),
                        model_candidates = models.as_ref().map_or(0, |m| m.of.len()),
                        "history snapshot rebuilt"
                    );
                    *self.snapshot.write().await = Some(Arc::new(Snapshot {
                        built: std::time::Instant::now(),
                        series,
                        models,
                        models_at,
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

    /// `auto`'s model-based candidates for every series of a snapshot on
    /// the default resources (cpu, memory), with the default parameters,
    /// and when they were evaluated: `previous`'s when the served model is
    /// the same and they are younger than [`MODEL_CANDIDATES_EVERY`] (their
    /// costs decay over days; replaying every series through every
    /// candidate at each rebuild would not pay), else evaluated now;
    /// `None` (logged) when no model answers or the evaluation fails.
    async fn snapshot_models(
        &self,
        series: &crate::history::Summaries,
        previous: Option<Arc<Snapshot>>,
    ) -> (Option<Arc<ModelCandidates>>, Option<std::time::Instant>) {
        let info = match self.predictor.info().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "no model for auto's candidates in the snapshot");
                return (None, None);
            }
        };
        if let Some(p) = previous
            && let (Some(m), Some(at)) = (&p.models, p.models_at)
            && m.version == info.version
            && at.elapsed() < MODEL_CANDIDATES_EVERY
        {
            return (Some(m.clone()), Some(at));
        }
        let mut services: Vec<String> = series.keys().map(|k| k.0.clone()).collect();
        services.sort();
        services.dedup();
        // The resources a request names by default: evaluating every IO
        // resource too would multiply the rebuild; a request naming one
        // evaluates its series when asked.
        let resources = crate::default_resources();
        let Ok(params) = Params::resolve(&Overrides::default(), Strategy::Auto) else {
            return (None, None);
        };
        let t = std::time::Instant::now();
        match self
            .evaluate_models(&info, &services, &resources, &params)
            .await
        {
            Ok(c) => {
                tracing::debug!(
                    series = c.of.len(),
                    seconds = t.elapsed().as_secs_f64(),
                    "auto's model candidates evaluated for the snapshot"
                );
                (Some(Arc::new(c)), Some(t))
            }
            Err(e) => {
                tracing::warn!(error = %e, "auto's model candidates not evaluated for the snapshot");
                (None, None)
            }
        }
    }

    /// Runs `strategy` for every service × resource of `m`; a series no
    /// strategy can answer is returned unanswered, the others answered.
    pub(crate) async fn allocate(
        &self,
        m: &Mix,
        strategy: Strategy,
        params: &Params,
    ) -> Result<Allocated> {
        match strategy {
            Strategy::Auto => self.by_auto(m, params).await,
            Strategy::Max | Strategy::Percentile | Strategy::Vpa => {
                let source = self.summaries(m, params).await?;
                let mut allocs = Vec::new();
                for service in &m.services {
                    for resource in &m.resources {
                        let r = self.by_history(&source, service, resource, strategy, params);
                        allocs.push((r, Vec::new()));
                    }
                }
                Ok(Allocated {
                    allocs,
                    horizon: 0.0,
                })
            }
            Strategy::Predictive | Strategy::Plan => self.by_model(m, strategy, params).await,
            Strategy::Provisioned => Err(Error::StrategyNotHere {
                strategy: strategy.name(),
                why: "replays what an imported trace allocated; it exists only in backtests",
            }),
        }
    }

    /// One series by a history-based strategy, corrected by its recorded
    /// pressure; unanswered without history.
    fn by_history(
        &self,
        source: &Source,
        service: &str,
        resource: &str,
        strategy: Strategy,
        params: &Params,
    ) -> Recommendation {
        let of = |r: &str| {
            source
                .summaries()
                .get(&(service.to_string(), r.to_string()))
        };
        let Some(summary) = of(resource) else {
            let why = Error::NoHistory {
                service: service.to_string(),
                resource: resource.to_string(),
                window: headroom_units::duration(self.options.history.as_secs_f64()),
                strategy: strategy.name(),
            };
            return unanswered(service, resource, strategy, why.to_string());
        };
        let mut a = history_alloc(strategy, summary, params);
        correct_by_pressure(source, service, resource, &mut a);
        Recommendation {
            service: service.to_string(),
            resource: resource.to_string(),
            strategy,
            alloc: a,
            model_version: String::new(),
            fallback: None,
            unanswered: None,
        }
    }

    /// `auto` for every series: the history family's cheapest candidate
    /// from the summaries, against the calibrated model's candidates
    /// ([`replay::model_candidates`]) where a model is served; a series
    /// the model wins is allocated by that candidate over the predictor's
    /// curves for this mix. A series without history is unanswered, as by
    /// the history family.
    async fn by_auto(&self, m: &Mix, params: &Params) -> Result<Allocated> {
        let source = self.summaries(m, params).await?;
        let mut allocs = Vec::new();
        for service in &m.services {
            for resource in &m.resources {
                let r = self.by_history(&source, service, resource, Strategy::Auto, params);
                allocs.push((r, Vec::new()));
            }
        }
        // Without the model's candidates every series keeps the history's
        // answer, saying why.
        let without_model = |mut allocs: Vec<(Recommendation, Vec<Segment>)>, why: Error| {
            for (r, _) in allocs.iter_mut().filter(|(r, _)| r.unanswered.is_none()) {
                r.alloc.detail.push_str(&format!(
                    "; the model's candidates were not compared: {why}"
                ));
            }
            Ok(Allocated {
                allocs,
                horizon: 0.0,
            })
        };
        let (info, models) = match self.model_candidates(m, params, &source).await {
            Ok(found) => found,
            Err(e) => return without_model(allocs, e),
        };
        let mut winners = Vec::new();
        for (i, (r, _)) in allocs.iter_mut().enumerate() {
            let key = (r.service.clone(), r.resource.clone());
            let Some(summary) = source
                .summaries()
                .get(&key)
                .filter(|_| r.unanswered.is_none())
            else {
                continue;
            };
            match ModelWin::of(summary, params, &models, &r.service, &r.resource) {
                Some(win) => winners.push((i, win)),
                // The history won: say what the model's candidates did.
                None => r.alloc.detail.push_str(&models.lost(
                    &r.service,
                    &r.resource,
                    &strategy::auto::weights(summary.kind(), params),
                )),
            }
        }
        if winners.is_empty() {
            return Ok(Allocated {
                allocs,
                horizon: 0.0,
            });
        }
        let known = info.known();
        let mix = replay::known_mix(&m.services, &known);
        let predictable = info.predictable(&m.resources);
        let curves = match self.horizon(m, params).await {
            Ok(horizon) => self
                .predictor
                .task(&mix, &predictable, horizon, curve_step(horizon), now())
                .await
                .map(|p| (p, horizon)),
            Err(e) => Err(e),
        };
        let (predicted, horizon) = match curves {
            Ok(found) => found,
            Err(e) => return without_model(allocs, e),
        };
        // Recent tasks, to say where a winner's service never ran in this
        // mix (the model predicts it for the services beside it).
        let start = now() - self.options.history.as_secs_f64();
        let recent = self
            .collector
            .tasks("", Some(start), None)
            .await
            .inspect_err(|e| tracing::debug!(error = %e, "no recent tasks for auto's notes"))
            .unwrap_or_default();
        for (i, win) in winners {
            let (r, segs) = &mut allocs[i];
            let Some(curves) = predicted
                .curves
                .get(&(r.service.clone(), r.resource.clone()))
            else {
                continue;
            };
            let (segments, mut a) = win.allocate(curves, horizon, params);
            if let Some(note) = replay::unseen_mix_note(&r.service, &mix, &recent, &known) {
                a.detail.push_str(&note);
            }
            correct_by_pressure(&source, &r.service, &r.resource, &mut a);
            r.alloc = a;
            r.model_version.clone_from(&info.version);
            *segs = segments;
        }
        Ok(Allocated { allocs, horizon })
    }

    /// `auto`'s model-based candidates for `m`'s series: the snapshot's
    /// when it evaluated them with the served model and these parameters,
    /// else evaluated now on the out-of-sample history (in sample when
    /// the model names no held-out task). An error when no model answers.
    async fn model_candidates(
        &self,
        m: &Mix,
        params: &Params,
        source: &Source,
    ) -> Result<(ModelInfo, Arc<ModelCandidates>)> {
        let info = self.predictor.info().await?;
        if let Source::Snapshot(s) = source
            && let Some(c) = &s.models
            && c.version == info.version
            && c.params == candidate_params(params)
            && m.resources.iter().all(|r| c.resources.contains(r))
        {
            return Ok((info, c.clone()));
        }
        let c = self
            .evaluate_models(&info, &m.services, &m.resources, params)
            .await?;
        Ok((info, Arc::new(c)))
    }

    /// Evaluates `auto`'s model-based candidates with the model `info`
    /// for `services` × `resources`, on what happened in the history
    /// window up to now.
    async fn evaluate_models(
        &self,
        info: &ModelInfo,
        services: &[String],
        resources: &[String],
        params: &Params,
    ) -> Result<ModelCandidates> {
        let end = now();
        let start = end - self.options.history.as_secs_f64();
        let past =
            match replay::out_of_sample(&self.collector, info, services, resources, start, end)
                .await?
            {
                Some(h) => h,
                None => {
                    self.collector
                        .history(services, resources, &[], Some(start), None)
                        .await?
                }
            };
        let durations = self.collector.tasks("", Some(start), None).await?;
        let horizon_of =
            |t: &TaskInfo| replay::horizon_before(&durations, t, params.horizon_seconds);
        let mut c = replay::model_candidates(
            &self.predictor,
            info,
            &past,
            resources,
            params,
            end,
            &horizon_of,
        )
        .await?;
        c.params = candidate_params(params);
        Ok(c)
    }

    /// Every series by a model-based strategy: the predictor's curves for
    /// the services the model knows, calibrated on each series' replayed
    /// recent history; the others fall back to [`FALLBACK_STRATEGY`].
    async fn by_model(&self, m: &Mix, strategy: Strategy, params: &Params) -> Result<Allocated> {
        let info = match self.predictor.info().await {
            Ok(info) => info,
            Err(e) => {
                // Without the predictor every series falls back alone.
                let why = e.to_string();
                let horizon = self.horizon(m, params).await.unwrap_or(0.0);
                let mut allocs = Vec::new();
                let mut fell_back = Vec::new();
                for service in &m.services {
                    for resource in &m.resources {
                        fell_back.push((allocs.len(), why.clone()));
                        allocs.push((
                            unanswered(service, resource, strategy, String::new()),
                            Vec::new(),
                        ));
                    }
                }
                return self
                    .fall_back(m, strategy, params, allocs, fell_back, horizon)
                    .await;
            }
        };
        let known = info.known();
        let mix = replay::known_mix(&m.services, &known);
        let predictable = info.predictable(&m.resources);
        let horizon = self.horizon(m, params).await?;
        let predicted = if mix.is_empty() || predictable.is_empty() {
            None
        } else {
            Some(
                self.predictor
                    .task(&mix, &predictable, horizon, curve_step(horizon), now())
                    .await?,
            )
        };
        let end = now();
        let start = end - self.options.history.as_secs_f64();
        let (past, in_sample) = match replay::out_of_sample(
            &self.collector,
            &info,
            &m.services,
            &predictable,
            start,
            end,
        )
        .await?
        {
            Some(h) => (h, false),
            None => (
                self.collector
                    .history(&m.services, &predictable, &[], Some(start), None)
                    .await?,
                true,
            ),
        };
        // Past tasks replay with the horizon a request for their mix gets.
        let durations = self.collector.tasks("", Some(start), None).await?;
        let horizon_of =
            |t: &TaskInfo| replay::horizon_before(&durations, t, params.horizon_seconds);
        let maps = replay::scores_of_rules(
            &self.predictor,
            &known,
            &past,
            &predictable,
            &replay::calibration_rules(strategy, params),
            end,
            &horizon_of,
        )
        .await?;
        let scores = &maps[0];
        let pools = calibrate::Pools::of(scores);
        // A plan's cap: the predictive rule's calibration.
        let caps = maps.get(1);
        let cap_pools = caps.map(calibrate::Pools::of).unwrap_or_default();
        let mut allocs = Vec::new();
        let mut fell_back = Vec::new();
        for service in &m.services {
            for resource in &m.resources {
                let key = (service.clone(), resource.clone());
                let curves = predicted.as_ref().and_then(|p| p.curves.get(&key));
                let own = scores.get(&key).map_or(&[][..], Vec::as_slice);
                let rate = params.target_violation_rate;
                let why = match curves {
                    None if !known.contains(service) => {
                        format!("service {service} is unknown to model {}", info.version)
                    }
                    None => format!("model {} does not predict {resource}", info.version),
                    Some(curves) => match pools.calibrate(own, resource, rate) {
                        Some(c) => {
                            if tracing::enabled!(tracing::Level::DEBUG) {
                                let mut r: Vec<f64> = own.iter().map(|s| s.ratio).collect();
                                r.sort_by(f64::total_cmp);
                                let q = |p: f64| {
                                    r.get(
                                        ((r.len() as f64 * p) as usize)
                                            .min(r.len().saturating_sub(1)),
                                    )
                                    .copied()
                                    .unwrap_or(f64::NAN)
                                };
                                tracing::debug!(
                                    %service, %resource, scores = r.len(), factor = c.factor,
                                    p50 = q(0.5), p90 = q(0.9), p95 = q(0.95), p99 = q(0.99),
                                    ones = r.iter().filter(|x| **x == 1.0).count(),
                                    "calibration scores"
                                );
                            }
                            let (mut segments, mut a) =
                                replay::rule(strategy, curves, horizon, params);
                            replay::apply(&c, &mut segments, &mut a, rate);
                            let cap_own = caps
                                .and_then(|s| s.get(&key))
                                .map_or(&[][..], Vec::as_slice);
                            if caps.is_some()
                                && let Some(cc) = cap_pools.calibrate(cap_own, resource, rate)
                            {
                                let cap = replay::PlanCap {
                                    cap: cc,
                                    plan_half: pools.calibrate(own, resource, rate / 2.0),
                                    cap_half: cap_pools.calibrate(cap_own, resource, rate / 2.0),
                                };
                                replay::capped_plan(
                                    &mut segments,
                                    &mut a,
                                    curves,
                                    horizon,
                                    params,
                                    crate::params::Kind::of(resource),
                                    &cap,
                                );
                            }
                            if let Some(note) =
                                replay::unseen_mix_note(service, &mix, &durations, &known)
                            {
                                a.detail.push_str(&note);
                            }
                            if in_sample {
                                a.detail.push_str(
                                    " (in sample: the model names no held-out task, retrain it)",
                                );
                            }
                            let r = Recommendation {
                                service: service.clone(),
                                resource: resource.clone(),
                                strategy,
                                alloc: a,
                                model_version: info.version.clone(),
                                fallback: None,
                                unanswered: None,
                            };
                            allocs.push((r, segments));
                            continue;
                        }
                        None => replay::thin_reason(own, rate),
                    },
                };
                fell_back.push((allocs.len(), why));
                allocs.push((
                    unanswered(service, resource, strategy, String::new()),
                    Vec::new(),
                ));
            }
        }
        self.fall_back(m, strategy, params, allocs, fell_back, horizon)
            .await
    }

    /// Answers the series of `fell_back` (index into `allocs`, why) with
    /// [`FALLBACK_STRATEGY`], saying why.
    async fn fall_back(
        &self,
        m: &Mix,
        strategy: Strategy,
        params: &Params,
        mut allocs: Vec<(Recommendation, Vec<Segment>)>,
        fell_back: Vec<(usize, String)>,
        horizon: f64,
    ) -> Result<Allocated> {
        if fell_back.is_empty() {
            return Ok(Allocated { allocs, horizon });
        }
        let source = self.summaries(m, params).await?;
        let fallback = fallback_params(params);
        for (i, why) in fell_back {
            let (service, resource) = (&allocs[i].0.service, &allocs[i].0.resource);
            let mut r = self.by_history(&source, service, resource, FALLBACK_STRATEGY, &fallback);
            if r.unanswered.is_none() {
                r.alloc.detail = format!("fell back from {strategy} ({why}): {}", r.alloc.detail);
                r.fallback = Some(Fallback {
                    from: strategy,
                    reason: why,
                });
            } else if let Some(u) = &mut r.unanswered {
                *u = format!("{strategy} cannot answer ({why}) and {u}");
                r.alloc.detail = u.clone();
            }
            // A plan covers the horizon even where it fell back: one
            // segment at the fallback's level.
            let segments = if strategy == Strategy::Plan && r.unanswered.is_none() {
                vec![Segment {
                    start: 0.0,
                    end: horizon,
                    request: r.alloc.request,
                    limit: r.alloc.limit,
                }]
            } else {
                Vec::new()
            };
            allocs[i] = (r, segments);
        }
        Ok(Allocated { allocs, horizon })
    }
}

/// A history-based strategy over one series' summary.
pub fn history_alloc(strategy: Strategy, summary: &Summary, params: &Params) -> Alloc {
    match strategy {
        Strategy::Max => strategy::max(summary, params),
        Strategy::Vpa => strategy::vpa(summary, params),
        Strategy::Auto => strategy::auto(summary, params),
        _ => strategy::percentile(summary, params),
    }
}

/// `params` as they shape `auto`'s model-based candidates: without the
/// cost weights, which only choose among them.
fn candidate_params(params: &Params) -> Params {
    Params {
        overrun_weight: None,
        oom_weight: None,
        change_weight: None,
        ..params.clone()
    }
}

/// Corrects a history-based answer of one series by its recorded pressure
/// (OOM kills, throttling) and names replica skew; says where its history
/// came from.
fn correct_by_pressure(source: &Source, service: &str, resource: &str, a: &mut Alloc) {
    let of = |r: &str| {
        source
            .summaries()
            .get(&(service.to_string(), r.to_string()))
    };
    let Some(summary) = of(resource) else {
        return;
    };
    use headroom_proto::resource as res;
    match resource {
        res::MEMORY => {
            pressure::after_oom_kills(a, summary, of(res::OOM_KILLS), of(res::MEMORY_LIMIT))
        }
        res::CPU => pressure::after_throttling(a, of(res::CPU_THROTTLED), of(res::CPU_LIMIT)),
        _ => {}
    }
    pressure::name_skew(a, summary);
    a.detail.push_str(&source.note());
}

/// Refuses an empty resource name ([`Error::EmptyName`]) and a pressure
/// signal (`oom_kills`, `cpu_throttled`, the limits) asked as a resource to
/// allocate ([`Error::PressureResource`]).
pub fn check_resources(resources: &[String]) -> Result<()> {
    if resources.iter().any(String::is_empty) {
        return Err(Error::EmptyName {
            field: "resources",
            what: "resource",
        });
    }
    match resources
        .iter()
        .find(|r| headroom_proto::resource::PRESSURE.contains(&r.as_str()))
    {
        Some(r) => Err(Error::PressureResource { name: r.clone() }),
        None => Ok(()),
    }
}

/// A series nothing could answer, with `why`.
fn unanswered(service: &str, resource: &str, strategy: Strategy, why: String) -> Recommendation {
    Recommendation {
        service: service.to_string(),
        resource: resource.to_string(),
        strategy,
        alloc: Alloc {
            request: 0.0,
            limit: 0.0,
            expected_slack: 0.0,
            violation_risk: 0.0,
            samples_used: 0,
            detail: why.clone(),
        },
        model_version: String::new(),
        fallback: None,
        unanswered: Some(why),
    }
}
