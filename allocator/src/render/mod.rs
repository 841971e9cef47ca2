//! What the CLI prints: aligned tables for people, and JSON, CSV and
//! Kubernetes YAML built from serde structs for programs.

mod backtest;
pub mod k8s;

pub(crate) use backtest::trace_series;
pub use backtest::{
    Points, backtest, chart, chart_path, frontier_chart, frontier_csv, pareto, strategy_color,
    table,
};

use serde::Serialize;

use crate::{
    allocate::{PlanReport, Recommendation},
    error::Result,
    place::{HeadroomPoint, Placed},
};

/// How an allocation, plan or placement is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// Kubernetes: a `resources:` patch per container (recommend) or the
    /// plan as a resize schedule.
    K8s,
    /// CSV with a header, base units (one row per allocation, plan
    /// segment or assignment).
    Csv,
}

/// How a backtest's scores are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// CSV with a header.
    Csv,
}

/// The unit of a resource's values, as machine outputs name it (`cores`,
/// `bytes`, `bytes/s`).
fn unit(resource: &str) -> &'static str {
    headroom_proto::resource::unit(resource).unwrap_or_default()
}

/// The unit of a resource's values, for the shared formatter.
pub(crate) fn unit_of(resource: &str) -> headroom_units::Unit {
    headroom_units::Unit::from_name(unit(resource))
}

/// A value of a resource of `kind` as people read it (see [`human`]).
pub fn amount(kind: crate::params::Kind, value: f64) -> String {
    use crate::params::Kind;
    use headroom_units::Unit;
    match kind {
        Kind::Cpu => Unit::Cores,
        Kind::Memory => Unit::Bytes,
        Kind::Io => Unit::BytesPerSecond,
    }
    .format(value)
}

/// A resource's value as people read it (`250m`, `237Mi`, `1.8Gi`,
/// `12 KiB/s`): the one formatter of every table, plan and explanation.
pub fn human(resource: &str, value: f64) -> String {
    unit_of(resource).format(value)
}

fn json(value: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// Rows as CSV, the header from the row type's field names.
pub(crate) fn csv_of<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A plan segment, as CSV shows it: one row each.
#[derive(Debug, Serialize)]
struct SegmentCsv<'a> {
    service: &'a str,
    resource: &'a str,
    unit: &'a str,
    start_seconds: f64,
    end_seconds: f64,
    request: f64,
    limit: f64,
}

/// One allocation, as JSON shows it.
#[derive(Debug, Serialize)]
struct AllocationRow<'a> {
    service: &'a str,
    resource: &'a str,
    request: f64,
    limit: f64,
    unit: &'a str,
    expected_slack: f64,
    violation_risk: f64,
    strategy: &'a str,
    samples_used: u64,
    model_version: &'a str,
    detail: &'a str,
    /// The strategy asked, when another one answered (empty otherwise).
    fell_back_from: &'a str,
    /// Why it could not answer.
    fallback_reason: &'a str,
    /// Why nothing answered this series (empty when answered).
    unanswered: &'a str,
}

impl<'a> From<&'a Recommendation> for AllocationRow<'a> {
    fn from(r: &'a Recommendation) -> Self {
        AllocationRow {
            service: &r.service,
            resource: &r.resource,
            request: r.alloc.request,
            limit: r.alloc.limit,
            unit: unit(&r.resource),
            expected_slack: r.alloc.expected_slack,
            violation_risk: r.alloc.violation_risk,
            strategy: r.strategy.name(),
            samples_used: r.alloc.samples_used,
            model_version: &r.model_version,
            detail: &r.alloc.detail,
            fell_back_from: r.fallback.as_ref().map_or("", |f| f.from.name()),
            fallback_reason: r.fallback.as_ref().map_or("", |f| f.reason.as_str()),
            unanswered: r.unanswered.as_deref().unwrap_or(""),
        }
    }
}

/// Allocations in `output`.
pub fn recommendations(answer: &[Recommendation], output: Output) -> Result<String> {
    match output {
        Output::Table => {
            let mut out = format!(
                "{:<24} {:<10} {:>12} {:>12} {:>8} {:>8}\n",
                "service", "resource", "request", "limit", "slack", "risk"
            );
            let mut notes = String::new();
            let mut mixes = String::new();
            for r in answer {
                let a = &r.alloc;
                if let Some(why) = &r.unanswered {
                    out.push_str(&format!(
                        "{:<24} {:<10} unanswered: {why}\n",
                        r.service, r.resource
                    ));
                    continue;
                }
                if let Some(f) = &r.fallback {
                    notes.push_str(&format!(
                        "{} {}: {} answered, {} could not: {}\n",
                        r.service, r.resource, r.strategy, f.from, f.reason
                    ));
                }
                // A mix the service never ran in: the model's answer for it
                // was never replayed, so its risk is not a promise.
                let unseen = a
                    .detail
                    .find("; note: ")
                    .map(|at| &a.detail[at + "; note: ".len()..])
                    .filter(|n| n.contains(" never ran "));
                if let Some(note) = unseen {
                    let note = note
                        .split(" (from the history snapshot")
                        .next()
                        .unwrap_or(note);
                    mixes.push_str(&format!("{} {}: {note}\n", r.service, r.resource));
                }
                out.push_str(&format!(
                    "{:<24} {:<10} {:>12} {:>12} {:>7.1}% {:>7.2}%{}\n",
                    r.service,
                    r.resource,
                    human(&r.resource, a.request),
                    human(&r.resource, a.limit),
                    a.expected_slack * 100.0,
                    a.violation_risk * 100.0,
                    if unseen.is_some() { "*" } else { "" },
                ));
            }
            if !notes.is_empty() {
                out.push_str("fell back:\n");
                out.push_str(&notes);
            }
            if !mixes.is_empty() {
                out.push_str(
                    "* a mix the service never ran in: the model's answer for it was never replayed, so the risk is the target, not a measured promise:\n",
                );
                out.push_str(&mixes);
            }
            Ok(out)
        }
        Output::Json => json(&answer.iter().map(AllocationRow::from).collect::<Vec<_>>()),
        Output::Csv => csv_of(answer.iter().map(AllocationRow::from)),
        Output::K8s => {
            let answered: Vec<Recommendation> = answer
                .iter()
                .filter(|r| r.unanswered.is_none())
                .cloned()
                .collect();
            k8s::patches(&answered)
        }
    }
}

/// A plan segment, as JSON shows it.
#[derive(Debug, Serialize)]
struct SegmentRow {
    start_seconds: f64,
    end_seconds: f64,
    request: f64,
    limit: f64,
}

/// One resource's plan, as JSON shows it.
#[derive(Debug, Serialize)]
struct PlanRow<'a> {
    service: &'a str,
    resource: &'a str,
    unit: &'a str,
    segments: Vec<SegmentRow>,
}

/// Plans, as JSON shows them.
#[derive(Debug, Serialize)]
struct Plans<'a> {
    horizon_seconds: f64,
    plans: Vec<PlanRow<'a>>,
}

/// Plans in `output`.
pub fn plans(answer: &PlanReport, output: Output) -> Result<String> {
    match output {
        Output::Table => {
            let mut out = format!(
                "horizon {}\n",
                headroom_units::duration(answer.horizon_seconds)
            );
            for p in &answer.plans {
                let r = &p.recommendation;
                out.push_str(&format!("{} {}\n", r.service, r.resource));
                for s in &p.segments {
                    // Offsets into the task, as people write durations.
                    out.push_str(&format!(
                        "  {:>8} – {:>8}  request {:>10}  limit {:>10}\n",
                        headroom_units::duration(s.start),
                        headroom_units::duration(s.end),
                        human(&r.resource, s.request),
                        human(&r.resource, s.limit)
                    ));
                }
            }
            Ok(out)
        }
        Output::Json => json(&Plans {
            horizon_seconds: answer.horizon_seconds,
            plans: answer
                .plans
                .iter()
                .map(|p| PlanRow {
                    service: &p.recommendation.service,
                    resource: &p.recommendation.resource,
                    unit: unit(&p.recommendation.resource),
                    segments: p
                        .segments
                        .iter()
                        .map(|s| SegmentRow {
                            start_seconds: s.start,
                            end_seconds: s.end,
                            request: s.request,
                            limit: s.limit,
                        })
                        .collect(),
                })
                .collect(),
        }),
        Output::Csv => csv_of(answer.plans.iter().flat_map(|p| {
            let r = &p.recommendation;
            p.segments.iter().map(move |s| SegmentCsv {
                service: &r.service,
                resource: &r.resource,
                unit: unit(&r.resource),
                start_seconds: s.start,
                end_seconds: s.end,
                request: s.request,
                limit: s.limit,
            })
        })),
        Output::K8s => k8s::schedule(answer),
    }
}

/// A service's node, as JSON shows it.
#[derive(Debug, Serialize)]
struct AssignmentRow<'a> {
    service: &'a str,
    node: &'a str,
}

/// A placement, as JSON shows it.
#[derive(Debug, Serialize)]
struct Placement<'a> {
    assignments: Vec<AssignmentRow<'a>>,
    nodes_used: u32,
    unplaced: &'a [String],
    solver: &'a str,
}

/// A placement in `output` (Kubernetes output is the table).
pub fn placement(answer: &Placed, output: Output) -> Result<String> {
    if output == Output::Csv {
        return csv_of(
            answer
                .assignments
                .iter()
                .map(|(service, node)| AssignmentRow { service, node }),
        );
    }
    if output == Output::Json {
        return json(&Placement {
            assignments: answer
                .assignments
                .iter()
                .map(|(service, node)| AssignmentRow { service, node })
                .collect(),
            nodes_used: answer.nodes_used,
            unplaced: &answer.unplaced,
            solver: &answer.solver,
        });
    }
    let mut out = format!(
        "{} nodes used ({} solver)\n",
        answer.nodes_used, answer.solver
    );
    for (service, node) in &answer.assignments {
        out.push_str(&format!("  {service:<24} -> {node}\n"));
    }
    for (node, points) in &answer.headroom {
        let least = |f: fn(&HeadroomPoint) -> f64| points.iter().map(f).fold(f64::MAX, f64::min);
        out.push_str(&format!(
            "  {node:<24} least free: {} cpu, {} memory\n",
            human(headroom_proto::resource::CPU, least(|p| p.cpu_free)),
            human(headroom_proto::resource::MEMORY, least(|p| p.memory_free))
        ));
    }
    if !answer.unplaced.is_empty() {
        out.push_str(&format!("  unplaced: {}\n", answer.unplaced.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{Alloc, Strategy};

    #[test]
    fn a_mix_never_replayed_marks_its_risk() {
        let row = |service: &str, detail: &str| Recommendation {
            service: service.into(),
            resource: "cpu".into(),
            strategy: Strategy::Predictive,
            alloc: Alloc {
                request: 0.5,
                limit: 0.5,
                expected_slack: 0.2,
                violation_risk: 0.01,
                samples_used: 100,
                detail: detail.into(),
            },
            model_version: "m".into(),
            fallback: None,
            unanswered: None,
        };
        let table = recommendations(
            &[
                row("api", "calibrated ×1.2"),
                row(
                    "db",
                    "calibrated ×0.7; note: db never ran alone in the 9 recent task(s) it ran in; most often (9) it ran beside api. The model's answer depends on the services listed: list those it runs with",
                ),
            ],
            Output::Table,
        )
        .unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].ends_with("1.00%"), "{table}");
        assert!(lines[2].ends_with("1.00%*"), "{table}");
        assert!(
            table.contains("* a mix the service never ran in")
                && table.contains("db cpu: db never ran alone"),
            "{table}"
        );
    }
}
