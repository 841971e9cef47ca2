//! Protobuf <-> domain, both ways: the server reads requests and writes
//! answers with these, the CLI's client does the reverse.

use headroom_proto::{resource, v1};

use crate::{
    allocate::{Fallback, PlanReport, Recommendation, ResourcePlan, Workload},
    error::Result,
    history::TaskInfo,
    params::{Overrides, Peaks},
    place::{HeadroomPoint, Node, PlaceAsk, Placed, Solver},
    segments::Segment,
    strategy::{Alloc, DEFAULT_STRATEGY, Strategy},
};

/// A timestamp as unix seconds.
pub fn seconds_of(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + t.nanos as f64 * 1e-9
}

/// Unix seconds as a timestamp.
pub fn timestamp(secs: f64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs.floor() as i64,
        nanos: ((secs - secs.floor()) * 1e9) as i32,
    }
}

/// A stored task.
pub fn task_info(t: &v1::Task) -> TaskInfo {
    TaskInfo {
        id: t.id.clone(),
        start: t.start.as_ref().map_or(0.0, seconds_of),
        end: t.end.as_ref().map(seconds_of),
        services: t.services.clone(),
    }
}

/// A strategy by name; the empty name is [`DEFAULT_STRATEGY`].
pub fn strategy(name: &str) -> Result<Strategy> {
    if name.is_empty() {
        Ok(DEFAULT_STRATEGY)
    } else {
        name.parse()
    }
}

/// The unit of a resource's values (empty for an unknown resource).
fn unit(name: &str) -> String {
    resource::unit(name).unwrap_or_default().to_string()
}

/// Parameters as given (all defaults when absent); an unknown
/// `memory_peaks` is refused by name.
pub fn overrides(p: Option<v1::StrategyParams>) -> Result<Overrides> {
    let p = p.unwrap_or_default();
    Ok(Overrides {
        cpu_percentile: p.cpu_percentile,
        memory_percentile: p.memory_percentile,
        margin: p.margin,
        half_life_seconds: p.half_life_seconds,
        target_violation_rate: p.target_violation_rate,
        max_resizes: p.max_resizes,
        min_segment_seconds: p.min_segment_seconds,
        horizon_seconds: p.horizon_seconds,
        limit_ratio: p.limit_ratio,
        median_floor: p.median_floor,
        memory_peaks: p.memory_peaks.as_deref().map(Peaks::parse).transpose()?,
        minimum: p.minimum,
        overrun_weight: p.overrun_weight,
        oom_weight: p.oom_weight,
        change_weight: p.change_weight,
    })
}

/// Parameters on the wire.
pub fn params(p: &Overrides) -> v1::StrategyParams {
    v1::StrategyParams {
        cpu_percentile: p.cpu_percentile,
        memory_percentile: p.memory_percentile,
        margin: p.margin,
        half_life_seconds: p.half_life_seconds,
        target_violation_rate: p.target_violation_rate,
        max_resizes: p.max_resizes,
        min_segment_seconds: p.min_segment_seconds,
        horizon_seconds: p.horizon_seconds,
        limit_ratio: p.limit_ratio,
        median_floor: p.median_floor,
        memory_peaks: p.memory_peaks.map(|m| m.name().to_string()),
        minimum: p.minimum,
        overrun_weight: p.overrun_weight,
        oom_weight: p.oom_weight,
        change_weight: p.change_weight,
    }
}

/// A workload as asked.
pub fn workload(w: Option<v1::Workload>) -> Workload {
    let w = w.unwrap_or_default();
    Workload {
        task_id: (!w.task_id.is_empty()).then_some(w.task_id),
        services: w.services,
        resources: w.resources,
    }
}

/// A workload on the wire.
pub fn workload_message(w: &Workload) -> v1::Workload {
    v1::Workload {
        task_id: w.task_id.clone().unwrap_or_default(),
        services: w.services.clone(),
        resources: w.resources.clone(),
    }
}

/// One allocation on the wire.
pub fn allocation(r: &Recommendation) -> v1::Allocation {
    v1::Allocation {
        service: r.service.clone(),
        resource: r.resource.clone(),
        request: r.alloc.request,
        limit: r.alloc.limit,
        expected_slack: r.alloc.expected_slack,
        violation_risk: r.alloc.violation_risk,
        unit: unit(&r.resource),
        explanation: Some(v1::Explanation {
            strategy: r.strategy.name().to_string(),
            samples_used: r.alloc.samples_used,
            model_version: r.model_version.clone(),
            detail: r.alloc.detail.clone(),
        }),
        fallback: r.fallback.as_ref().map(|f| v1::Fallback {
            from_strategy: f.from.name().to_string(),
            to_strategy: r.strategy.name().to_string(),
            reason: f.reason.clone(),
        }),
        status: r.unanswered.as_ref().map(|why| v1::SeriesStatus {
            code: tonic::Code::FailedPrecondition as i32,
            message: why.clone(),
        }),
    }
}

/// One allocation from the wire.
pub fn recommendation(a: v1::Allocation) -> Result<Recommendation> {
    let e = a.explanation.unwrap_or_default();
    Ok(Recommendation {
        strategy: e.strategy.parse()?,
        alloc: Alloc {
            request: a.request,
            limit: a.limit,
            expected_slack: a.expected_slack,
            violation_risk: a.violation_risk,
            samples_used: e.samples_used,
            detail: e.detail,
        },
        fallback: a
            .fallback
            .map(|f| {
                Ok::<_, crate::Error>(Fallback {
                    from: f.from_strategy.parse()?,
                    reason: f.reason,
                })
            })
            .transpose()?,
        unanswered: a.status.filter(|s| s.code != 0).map(|s| s.message),
        service: a.service,
        resource: a.resource,
        model_version: e.model_version,
    })
}

/// Plans on the wire.
pub fn plan_response(p: &PlanReport) -> v1::PlanResponse {
    v1::PlanResponse {
        plans: p
            .plans
            .iter()
            .map(|p| {
                let a = allocation(&p.recommendation);
                v1::ResourcePlan {
                    service: a.service,
                    resource: a.resource,
                    segments: p
                        .segments
                        .iter()
                        .map(|s| v1::Segment {
                            start_seconds: s.start,
                            end_seconds: s.end,
                            request: s.request,
                            limit: s.limit,
                        })
                        .collect(),
                    unit: a.unit,
                    explanation: a.explanation,
                }
            })
            .collect(),
        horizon_seconds: p.horizon_seconds,
    }
}

/// Plans from the wire (the plan's peak is its highest segment).
pub fn plan_report(p: v1::PlanResponse) -> Result<PlanReport> {
    let plans = p
        .plans
        .into_iter()
        .map(|p| {
            let segments: Vec<Segment> = p
                .segments
                .iter()
                .map(|s| Segment {
                    start: s.start_seconds,
                    end: s.end_seconds,
                    request: s.request,
                    limit: s.limit,
                })
                .collect();
            let peak = |f: fn(&Segment) -> f64| segments.iter().map(f).fold(0.0, f64::max);
            let recommendation = recommendation(v1::Allocation {
                request: peak(|s| s.request),
                limit: peak(|s| s.limit),
                service: p.service,
                resource: p.resource,
                unit: p.unit,
                explanation: p.explanation,
                ..Default::default()
            })?;
            Ok(ResourcePlan {
                recommendation,
                segments,
            })
        })
        .collect::<Result<_>>()?;
    Ok(PlanReport {
        plans,
        horizon_seconds: p.horizon_seconds,
    })
}

/// A placement request as asked.
pub fn place_ask(r: v1::PlaceRequest) -> Result<PlaceAsk> {
    let strategy = if r.mode() == v1::PlacementMode::Planned {
        Strategy::Plan
    } else {
        strategy(&r.strategy)?
    };
    let solver = match r.solver() {
        v1::Solver::Unspecified => Solver::Auto,
        v1::Solver::Exact => Solver::Exact,
        v1::Solver::Heuristic => Solver::Heuristic,
    };
    Ok(PlaceAsk {
        nodes: r
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                cpu: n.cpu_cores,
                memory: n.memory_bytes,
            })
            .collect(),
        strategy,
        solver,
        workload: workload(r.workload),
        params: overrides(r.params)?,
        replicas: r.replicas.into_iter().collect(),
    })
}

/// A placement request on the wire.
pub fn place_request(a: &PlaceAsk) -> v1::PlaceRequest {
    let planned = a.strategy == Strategy::Plan;
    v1::PlaceRequest {
        replicas: a.replicas.iter().map(|(s, n)| (s.clone(), *n)).collect(),
        workload: Some(workload_message(&a.workload)),
        nodes: a
            .nodes
            .iter()
            .map(|n| v1::Node {
                name: n.name.clone(),
                cpu_cores: n.cpu,
                memory_bytes: n.memory,
            })
            .collect(),
        mode: if planned {
            v1::PlacementMode::Planned
        } else {
            v1::PlacementMode::Static
        } as i32,
        solver: match a.solver {
            Solver::Auto => v1::Solver::Unspecified,
            Solver::Exact => v1::Solver::Exact,
            Solver::Heuristic => v1::Solver::Heuristic,
        } as i32,
        strategy: if planned {
            String::new()
        } else {
            a.strategy.name().to_string()
        },
        params: Some(params(&a.params)),
    }
}

/// A placement on the wire.
pub fn place_response(p: &Placed) -> v1::PlaceResponse {
    v1::PlaceResponse {
        assignments: p
            .assignments
            .iter()
            .map(|(service, node)| v1::Assignment {
                service: service.clone(),
                node: node.clone(),
            })
            .collect(),
        nodes_used: p.nodes_used,
        headroom: p
            .headroom
            .iter()
            .map(|(node, points)| v1::NodeHeadroom {
                node: node.clone(),
                points: points
                    .iter()
                    .map(|h| v1::HeadroomPoint {
                        seconds: h.seconds,
                        cpu_free: h.cpu_free,
                        memory_free: h.memory_free,
                    })
                    .collect(),
            })
            .collect(),
        unplaced: p.unplaced.clone(),
        solver: p.solver.clone(),
    }
}

/// A placement from the wire.
pub fn placed(p: v1::PlaceResponse) -> Placed {
    Placed {
        assignments: p
            .assignments
            .into_iter()
            .map(|a| (a.service, a.node))
            .collect(),
        nodes_used: p.nodes_used,
        headroom: p
            .headroom
            .into_iter()
            .map(|h| {
                let points = h
                    .points
                    .iter()
                    .map(|p| HeadroomPoint {
                        seconds: p.seconds,
                        cpu_free: p.cpu_free,
                        memory_free: p.memory_free,
                    })
                    .collect();
                (h.node, points)
            })
            .collect(),
        unplaced: p.unplaced,
        solver: p.solver,
    }
}
