//! Placement of a workload: each service's demand from its allocations
//! (static peaks or the plan's steps), packed, and the answer by name.

use std::collections::BTreeMap;

use super::{Demand, Node, Solver};
use crate::{
    allocate::{Allocator, Recommendation, Workload},
    error::{Error, Result},
    params::{Overrides, Params},
    quantiles::CURVE_POINTS,
    segments::Segment,
    strategy::Strategy,
};

/// Most replicas of one service a placement takes.
pub(crate) const MAX_REPLICAS: u32 = 1000;

/// What to place, on what.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaceAsk {
    /// The services (resources are always cpu and memory).
    pub workload: Workload,
    /// The nodes to place on.
    pub nodes: Vec<Node>,
    /// Whose peaks are packed: a static strategy, or `plan` for the
    /// time-varying plans.
    pub strategy: Strategy,
    /// Which solver.
    pub solver: Solver,
    /// Strategy parameters.
    pub params: Overrides,
    /// Replicas per service, each placed on its own; a service not named
    /// gets as many as the collector saw in one task (at least 1).
    pub replicas: BTreeMap<String, u32>,
}

/// Free capacity of a node at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadroomPoint {
    /// Seconds into the task.
    pub seconds: f64,
    /// Free cores.
    pub cpu_free: f64,
    /// Free bytes.
    pub memory_free: f64,
}

/// A placement's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// (service, node) of every placed service.
    pub assignments: Vec<(String, String)>,
    /// Nodes with at least one service.
    pub nodes_used: u32,
    /// Free capacity over the task of each used node, by name.
    pub headroom: Vec<(String, Vec<HeadroomPoint>)>,
    /// Services that fit nowhere.
    pub unplaced: Vec<String>,
    /// "exact" or "heuristic".
    pub solver: String,
}

impl Allocator {
    /// Places the workload's services on `ask.nodes` (see [`crate::place`]).
    pub async fn place(&self, ask: PlaceAsk) -> Result<Placed> {
        let params = Params::resolve(&ask.params, ask.strategy)?;
        let mut mix = self.mix(ask.workload).await?;
        mix.resources = crate::default_resources();
        // Validate the nodes before asking anyone for numbers.
        super::check(
            &ask.nodes,
            &[Demand {
                service: String::new(),
                cpu: vec![0.0],
                memory: vec![0.0],
            }],
        )?;
        let done = self.allocate(&mix, ask.strategy, &params).await?;
        if let Some(why) = done.allocs.iter().find_map(|(r, _)| r.unanswered.clone()) {
            // A placement needs every demand: one missing series stops it.
            return Err(Error::Unanswered(why));
        }
        let seconds: Vec<f64> = if ask.strategy == Strategy::Plan {
            let step = done.horizon / CURVE_POINTS;
            (0..=CURVE_POINTS as usize)
                .map(|i| i as f64 * step)
                .collect()
        } else {
            vec![0.0]
        };
        if let Some((service, n)) = ask.replicas.iter().find(|(_, n)| **n > MAX_REPLICAS) {
            return Err(Error::Placement(format!(
                "replicas of {service:?}: {n} is more than the {MAX_REPLICAS} one placement takes"
            )));
        }
        let seen = self.collector().replicas().await?;
        let replicas = |service: &str| {
            ask.replicas
                .get(service)
                .or_else(|| seen.get(service))
                .copied()
                .unwrap_or(1)
                .clamp(1, MAX_REPLICAS)
        };
        let demands = demands(&done.allocs, &seconds, replicas);
        let (nodes, solver) = (ask.nodes, ask.solver);
        let placement = tokio::task::spawn_blocking({
            let (nodes, demands) = (nodes.clone(), demands.clone());
            move || super::place(&nodes, &demands, solver)
        })
        .await
        .map_err(|e| Error::Panicked {
            what: "placement",
            message: e.to_string(),
        })??;
        let mut used: Vec<usize> = placement.node.iter().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        let service_at = |placed: bool| {
            demands
                .iter()
                .zip(&placement.node)
                .filter(move |(_, n)| n.is_some() == placed)
        };
        Ok(Placed {
            assignments: service_at(true)
                .filter_map(|(d, n)| n.map(|n| (d.service.clone(), nodes[n].name.clone())))
                .collect(),
            nodes_used: used.len() as u32,
            headroom: used
                .iter()
                .map(|&n| {
                    let points = placement
                        .headroom(n, &nodes, &demands)
                        .iter()
                        .zip(&seconds)
                        .map(|((cpu, mem), s)| HeadroomPoint {
                            seconds: *s,
                            cpu_free: *cpu,
                            memory_free: *mem,
                        })
                        .collect();
                    (nodes[n].name.clone(), points)
                })
                .collect(),
            unplaced: service_at(false).map(|(d, _)| d.service.clone()).collect(),
            solver: placement.solver.to_string(),
        })
    }
}

/// Each replica's demand at each of `seconds`: its service's cpu and
/// memory requests (what one replica gets), read off the plan's segments
/// where there are any, once per replica.
fn demands(
    allocs: &[(Recommendation, Vec<Segment>)],
    seconds: &[f64],
    replicas: impl Fn(&str) -> u32,
) -> Vec<Demand> {
    let mut per: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (r, segments) in allocs {
        let e = per
            .entry(r.service.as_str())
            .or_insert_with(|| (vec![0.0; seconds.len()], vec![0.0; seconds.len()]));
        let at = |t: f64| {
            segments
                .iter()
                .find(|s| t >= s.start && t < s.end)
                .or(segments.last())
                .map_or(r.alloc.request, |s| s.request)
        };
        let values: Vec<f64> = seconds.iter().map(|t| at(*t)).collect();
        match r.resource.as_str() {
            headroom_proto::resource::CPU => e.0 = values,
            _ => e.1 = values,
        }
    }
    per.into_iter()
        .flat_map(|(s, (cpu, memory))| {
            (0..replicas(s)).map(move |_| Demand {
                service: s.to_string(),
                cpu: cpu.clone(),
                memory: memory.clone(),
            })
        })
        .collect()
}
