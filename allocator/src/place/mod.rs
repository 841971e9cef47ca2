//! Placement: a task's services onto nodes, a multi-dimensional bin
//! packing over CPU and memory at every moment of the task.
//!
//! Each service brings a demand per moment (one moment for static peaks,
//! the plan's steps for time-varying plans), so services whose peaks do not
//! coincide may share a node. A node holds a set of services when, at every
//! moment and in both dimensions, their summed demand fits its capacity.
//!
//! - **Exact** (small inputs, at most [`EXACT_MAX_SERVICES`] services and
//!   [`EXACT_MAX_NODES`] nodes): an integer programme solved by `microlp`
//!   through `good_lp` — binary `x[s][n]` (service on node), `y[n]` (node
//!   used), `u[s]` (service unplaced); each service placed once or
//!   unplaced; per node, moment and dimension the demand placed is at most
//!   the capacity times `y[n]`; minimise nodes used, with an unplaced
//!   service costing more than every node. Warm-started from the heuristic.
//! - **Heuristic**: first-fit decreasing. Services sorted by their largest
//!   demand as a share of the mean node capacity (the dominant resource);
//!   each goes to the first node already in use where it fits at every
//!   moment, else to the first unused node where it fits, else unplaced.

mod request;

use good_lp::{
    Expression, ProblemVariables, Solution, SolverModel, Variable, WithInitialSolution,
    WithTimeLimit, microlp, variable,
};

pub use request::{HeadroomPoint, PlaceAsk, Placed};

use crate::error::{Error, Result};

/// Most services the exact solver takes.
pub const EXACT_MAX_SERVICES: usize = 12;
/// Most nodes the exact solver takes.
pub const EXACT_MAX_NODES: usize = 12;

/// A node's capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Cores.
    pub cpu: f64,
    /// Bytes.
    pub memory: f64,
}

/// A service's demand at each moment (`cpu[t]`, `memory[t]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Service name.
    pub service: String,
    /// Cores per moment.
    pub cpu: Vec<f64>,
    /// Bytes per moment.
    pub memory: Vec<f64>,
}

/// Which solver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Solver {
    /// Exact when the input is small enough, else the heuristic.
    Auto,
    /// Exact, refused above its size limits.
    Exact,
    /// First-fit decreasing.
    Heuristic,
}

/// A placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// `node[s]`: index of the node service `s` went to; `None`: unplaced.
    pub node: Vec<Option<usize>>,
    /// "exact" or "heuristic".
    pub solver: &'static str,
}

impl Placement {
    /// Nodes with at least one service.
    pub fn nodes_used(&self) -> usize {
        let mut used: Vec<usize> = self.node.iter().flatten().copied().collect();
        used.sort_unstable();
        used.dedup();
        used.len()
    }

    /// Free (cpu, memory) of `node` at each moment.
    pub fn headroom(&self, node: usize, nodes: &[Node], demands: &[Demand]) -> Vec<(f64, f64)> {
        let moments = demands.first().map_or(1, |d| d.cpu.len());
        (0..moments)
            .map(|t| {
                let (mut cpu, mut mem) = (nodes[node].cpu, nodes[node].memory);
                for (s, d) in demands.iter().enumerate() {
                    if self.node[s] == Some(node) {
                        cpu -= d.cpu[t];
                        mem -= d.memory[t];
                    }
                }
                (cpu, mem)
            })
            .collect()
    }
}

/// Checks that there are nodes with capacity and services with demands
/// for the same number of moments; returns that number.
pub fn check(nodes: &[Node], demands: &[Demand]) -> Result<usize> {
    let bad = |m: String| Err(Error::Placement(m));
    if nodes.is_empty() {
        return bad("no nodes to place on".into());
    }
    if demands.is_empty() {
        return bad("no services to place".into());
    }
    for (i, n) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|m| m.name == n.name) {
            return bad(format!(
                "node {:?} is given twice; name each node once",
                n.name
            ));
        }
        if !(n.cpu.is_finite() && n.cpu > 0.0 && n.memory.is_finite() && n.memory > 0.0) {
            return bad(format!(
                "node {:?} needs cpu_cores and memory_bytes greater than 0, got {} and {}",
                n.name, n.cpu, n.memory
            ));
        }
    }
    let moments = demands[0].cpu.len();
    for d in demands {
        if d.cpu.len() != moments || d.memory.len() != moments || moments == 0 {
            return bad(format!(
                "service {:?} has demands for {} moments, expected {moments}",
                d.service,
                d.cpu.len()
            ));
        }
    }
    Ok(moments)
}

fn fits(node: &Node, load: &[(f64, f64)], d: &Demand) -> bool {
    load.iter().enumerate().all(|(t, (c, m))| {
        c + d.cpu[t] <= node.cpu * (1.0 + 1e-9) && m + d.memory[t] <= node.memory * (1.0 + 1e-9)
    })
}

/// First-fit decreasing (see the module doc).
pub fn heuristic(nodes: &[Node], demands: &[Demand]) -> Result<Placement> {
    let moments = check(nodes, demands)?;
    let mean_cpu = nodes.iter().map(|n| n.cpu).sum::<f64>() / nodes.len() as f64;
    let mean_mem = nodes.iter().map(|n| n.memory).sum::<f64>() / nodes.len() as f64;
    let size = |d: &Demand| {
        (0..moments)
            .map(|t| (d.cpu[t] / mean_cpu).max(d.memory[t] / mean_mem))
            .fold(0.0, f64::max)
    };
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by(|&a, &b| {
        size(&demands[b])
            .total_cmp(&size(&demands[a]))
            .then(a.cmp(&b))
    });
    let mut load = vec![vec![(0.0, 0.0); moments]; nodes.len()];
    let mut used = vec![false; nodes.len()];
    let mut node = vec![None; demands.len()];
    for s in order {
        let d = &demands[s];
        let pick = (0..nodes.len())
            .filter(|&n| used[n])
            .chain((0..nodes.len()).filter(|&n| !used[n]))
            .find(|&n| fits(&nodes[n], &load[n], d));
        if let Some(n) = pick {
            used[n] = true;
            for (t, l) in load[n].iter_mut().enumerate() {
                l.0 += d.cpu[t];
                l.1 += d.memory[t];
            }
            node[s] = Some(n);
        }
    }
    Ok(Placement {
        node,
        solver: "heuristic",
    })
}

/// The exact integer programme (see the module doc).
pub fn exact(nodes: &[Node], demands: &[Demand]) -> Result<Placement> {
    let moments = check(nodes, demands)?;
    if demands.len() > EXACT_MAX_SERVICES || nodes.len() > EXACT_MAX_NODES {
        return Err(Error::Placement(format!(
            "the exact solver takes at most {EXACT_MAX_SERVICES} services and {EXACT_MAX_NODES} nodes, got {} and {}; use the heuristic",
            demands.len(),
            nodes.len()
        )));
    }
    let start = heuristic(nodes, demands)?;
    let mut vars = ProblemVariables::new();
    let x: Vec<Vec<Variable>> = demands
        .iter()
        .map(|_| {
            nodes
                .iter()
                .map(|_| vars.add(variable().binary()))
                .collect()
        })
        .collect();
    let y: Vec<Variable> = nodes
        .iter()
        .map(|_| vars.add(variable().binary()))
        .collect();
    let u: Vec<Variable> = demands
        .iter()
        .map(|_| vars.add(variable().binary()))
        .collect();
    let penalty = nodes.len() as f64 + 1.0;
    let objective: Expression = y.iter().map(|v| Expression::from(*v)).sum::<Expression>()
        + u.iter().map(|v| penalty * *v).sum::<Expression>();
    let mut model = vars.minimise(objective).using(microlp);
    for (s, d) in demands.iter().enumerate() {
        let placed: Expression = x[s].iter().map(|v| Expression::from(*v)).sum();
        model.add_constraint((placed + u[s]).eq(1));
        for (n, node) in nodes.iter().enumerate() {
            // A service that cannot fit a node alone never goes there.
            if !fits(node, &vec![(0.0, 0.0); moments], d) {
                model.add_constraint(Expression::from(x[s][n]).eq(0));
            }
        }
    }
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..moments {
            let cpu: Expression = demands
                .iter()
                .enumerate()
                .map(|(s, d)| d.cpu[t] * x[s][n])
                .sum();
            model.add_constraint(cpu.leq(node.cpu * y[n]));
            let mem: Expression = demands
                .iter()
                .enumerate()
                .map(|(s, d)| (d.memory[t] / node.memory) * x[s][n])
                .sum();
            model.add_constraint(mem.leq(1.0 * y[n]));
        }
    }
    let mut warm = Vec::new();
    for (s, at) in start.node.iter().enumerate() {
        for (n, v) in x[s].iter().enumerate() {
            warm.push((*v, if *at == Some(n) { 1.0 } else { 0.0 }));
        }
        warm.push((u[s], if at.is_none() { 1.0 } else { 0.0 }));
    }
    for (n, v) in y.iter().enumerate() {
        warm.push((
            *v,
            if start.node.contains(&Some(n)) {
                1.0
            } else {
                0.0
            },
        ));
    }
    let solution = model
        .with_initial_solution(warm)
        .with_time_limit(10.0)
        .solve()
        .map_err(|e| Error::Placement(format!("the exact solver failed: {e}")))?;
    let node = x
        .iter()
        .map(|row| row.iter().position(|v| solution.value(*v) > 0.5))
        .collect();
    Ok(Placement {
        node,
        solver: "exact",
    })
}

/// Places with `solver`.
pub fn place(nodes: &[Node], demands: &[Demand], solver: Solver) -> Result<Placement> {
    match solver {
        Solver::Exact => exact(nodes, demands),
        Solver::Heuristic => heuristic(nodes, demands),
        Solver::Auto if demands.len() <= EXACT_MAX_SERVICES && nodes.len() <= EXACT_MAX_NODES => {
            exact(nodes, demands).or_else(|_| heuristic(nodes, demands))
        }
        Solver::Auto => heuristic(nodes, demands),
    }
}

#[cfg(test)]
mod tests;
