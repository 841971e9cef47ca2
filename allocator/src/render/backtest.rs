//! A backtest's scores as a table, JSON or CSV (one serde row for both),
//! and charts of usage against each strategy's allocation.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{TableFormat, json};
use crate::{
    backtest::{BacktestReport, BacktestRow, FrontierPoint, Trace},
    error::{Error, Result},
    strategy::Strategy,
};

/// One score row, as JSON and CSV show it (CSV's header is its fields).
#[derive(Debug, Serialize)]
struct Row<'a> {
    strategy: &'a str,
    resource: &'a str,
    relative_slack: f64,
    absolute_slack: f64,
    violation_rate: f64,
    oom_events: u64,
    changes: u64,
    samples: u64,
    fallback_share: f64,
    model_share: f64,
}

impl<'a> From<&'a BacktestRow> for Row<'a> {
    fn from(r: &'a BacktestRow) -> Self {
        Self {
            strategy: r.strategy.name(),
            resource: &r.resource,
            relative_slack: r.relative_slack,
            absolute_slack: r.absolute_slack,
            violation_rate: r.violation_rate,
            oom_events: r.oom_events,
            changes: r.changes,
            samples: r.samples,
            fallback_share: r.fallback_share,
            model_share: r.model_share,
        }
    }
}

/// One frontier point, as JSON and CSV show it.
#[derive(Debug, Serialize)]
struct Point<'a> {
    strategy: &'a str,
    setting: &'a str,
    resource: &'a str,
    violation_rate: f64,
    relative_slack: f64,
    oom_events: u64,
    fallback_share: f64,
    model_share: f64,
}

impl<'a> From<&'a FrontierPoint> for Point<'a> {
    fn from(p: &'a FrontierPoint) -> Self {
        Self {
            strategy: p.strategy.name(),
            setting: &p.setting,
            resource: &p.resource,
            violation_rate: p.violation_rate,
            relative_slack: p.relative_slack,
            oom_events: p.oom_events,
            fallback_share: p.fallback_share,
            model_share: p.model_share,
        }
    }
}

/// The scores, as JSON shows them.
#[derive(Debug, Serialize)]
struct Scores<'a> {
    task_ids: &'a [String],
    rows: Vec<Row<'a>>,
    recorded_oom_kills: u64,
    frontier: Vec<Point<'a>>,
}

/// The backtest as an aligned table, one row per strategy and resource.
pub fn table(answer: &BacktestReport) -> String {
    let mut out = format!(
        "{}; absolute slack in core-hours (cpu), GiB-hours (memory), GiB (IO)\n{:<12} {:<10} {:>9} {:>10} {:>10} {:>6} {:>8} {:>8} {:>9} {:>9}\n",
        headroom_units::count(answer.task_ids.len() as u64, "held-out task"),
        "strategy",
        "resource",
        "rel.slack",
        "abs.slack",
        "violation",
        "oom",
        "changes",
        "samples",
        "fell back",
        "by model"
    );
    for r in &answer.rows {
        out.push_str(&format!(
            "{:<12} {:<10} {:>8.1}% {:>10.3} {:>9.2}% {:>6} {:>8} {:>8} {:>8.1}% {:>8.1}%\n",
            r.strategy.name(),
            r.resource,
            r.relative_slack * 100.0,
            r.absolute_slack,
            r.violation_rate * 100.0,
            r.oom_events,
            r.changes,
            r.samples,
            r.fallback_share * 100.0,
            r.model_share * 100.0
        ));
    }
    if !answer.frontier.is_empty() {
        out.push_str(&format!(
            "slack–violation frontier:\n{:<12} {:<22} {:<10} {:>10} {:>9} {:>6} {:>9} {:>9}\n",
            "strategy",
            "setting",
            "resource",
            "violation",
            "rel.slack",
            "oom",
            "fell back",
            "by model"
        ));
        for p in &answer.frontier {
            out.push_str(&format!(
                "{:<12} {:<22} {:<10} {:>9.2}% {:>8.1}% {:>6} {:>8.1}% {:>8.1}%\n",
                p.strategy.name(),
                p.setting,
                p.resource,
                p.violation_rate * 100.0,
                p.relative_slack * 100.0,
                p.oom_events,
                p.fallback_share * 100.0,
                p.model_share * 100.0
            ));
        }
    }
    out.push_str(&format!(
        "OOM kills recorded by the agents in these tasks: {} (the oom column: samples above each strategy's memory limit)\n",
        answer.recorded_oom_kills
    ));
    out
}

/// The backtest's scores in `format`.
pub fn backtest(answer: &BacktestReport, format: TableFormat) -> Result<String> {
    match format {
        TableFormat::Table => Ok(table(answer)),
        TableFormat::Json => json(&Scores {
            task_ids: &answer.task_ids,
            rows: answer.rows.iter().map(Row::from).collect(),
            recorded_oom_kills: answer.recorded_oom_kills,
            frontier: answer.frontier.iter().map(Point::from).collect(),
        }),
        TableFormat::Csv => super::csv_of(answer.rows.iter().map(Row::from)),
    }
}

/// The frontier's points in CSV (one line per variant and resource).
pub fn frontier_csv(answer: &BacktestReport) -> Result<String> {
    super::csv_of(answer.frontier.iter().map(Point::from))
}

/// (violation rate, relative slack) points.
pub type Points = Vec<(f64, f64)>;

/// Splits (violation rate, relative slack) points into the Pareto front
/// (no other point has at most the violations and at most the slack, one
/// of them lower), sorted by violation rate, and the dominated rest.
pub fn pareto(points: &[(f64, f64)]) -> (Points, Points) {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (mut front, mut dominated) = (Vec::new(), Vec::new());
    let mut best_slack = f64::INFINITY;
    for p in sorted {
        // Sorted by violations: a point is on the front when its slack is
        // below every point with fewer (or as many) violations.
        if p.1 < best_slack {
            best_slack = p.1;
            front.push(p);
        } else {
            dominated.push(p);
        }
    }
    (front, dominated)
}

/// Draws the slack–violation frontier of `resource`: per strategy, a line
/// through its Pareto front of variants and markers for its dominated
/// ones, violation rate (%) against relative slack (%); lower and further
/// left is better. Variants that fell back for every series are left out
/// (they are `percentile`'s answers; the table and CSV keep them).
pub fn frontier_chart(path: &Path, answer: &BacktestReport, resource: &str) -> Result<()> {
    use headroom_charts::{Axis, Series, line_chart};
    let mut by_strategy: std::collections::BTreeMap<_, Vec<(f64, f64)>> = Default::default();
    // A point that fell back entirely is percentile's, not the strategy's:
    // drawn on its line it would zig-zag through the history's points.
    for p in answer
        .frontier
        .iter()
        .filter(|p| p.resource == resource && p.fallback_share < 1.0)
    {
        by_strategy
            .entry(p.strategy)
            .or_default()
            .push((p.violation_rate * 100.0, p.relative_slack * 100.0));
    }
    let mut series: Vec<Series> = Vec::new();
    for (s, points) in by_strategy {
        let (front, dominated) = pareto(&points);
        series.push(Series {
            label: s.name().to_string(),
            points: front,
            color: strategy_color(s),
            joined: true,
        });
        if !dominated.is_empty() {
            series.push(Series {
                label: String::new(),
                points: dominated,
                color: strategy_color(s),
                joined: false,
            });
        }
    }
    line_chart(
        path,
        &format!("{resource}: relative slack against violation rate (lower left is better)"),
        Axis::plain("violation rate (% of held-out samples above the limit)"),
        Axis::plain("relative slack (%)"),
        &series,
    )
    .map_err(|e| Error::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The colour of a strategy in every chart (backtest traces, frontier,
/// the report page): one per strategy, so a strategy keeps its colour
/// from chart to chart and no two strategies share one.
pub fn strategy_color(s: Strategy) -> (u8, u8, u8) {
    headroom_charts::PALETTE[s as usize % headroom_charts::PALETTE.len()]
}

/// `dir/stem-SERVICE-RESOURCE.ext` beside `path`.
pub fn chart_path(path: &Path, service: &str, resource: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("backtest");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{service}-{resource}.{ext}"))
}

/// The lines of a traced series' chart: usage (black), then each
/// strategy's request, in the palette's order.
pub(crate) fn trace_series(t: &Trace) -> Vec<headroom_charts::Series> {
    use headroom_charts::Series;
    let points = |values: &[f64]| {
        t.seconds
            .iter()
            .copied()
            .zip(values.iter().copied())
            .collect()
    };
    let mut series = vec![Series {
        label: "used".into(),
        points: points(&t.used),
        color: (0, 0, 0),
        joined: true,
    }];
    for s in &t.strategies {
        series.push(Series {
            label: s.strategy.name().to_string(),
            points: points(&s.request),
            color: strategy_color(s.strategy),
            joined: true,
        });
    }
    series
}

/// Draws usage of one traced series against each strategy's request.
pub fn chart(path: &Path, t: &Trace) -> Result<()> {
    use headroom_charts::{Axis, line_chart};
    let series = trace_series(t);
    line_chart(
        path,
        &format!(
            "{} {} in task {}: usage and allocations",
            t.service, t.resource, t.task_id
        ),
        Axis::plain("seconds into the task"),
        Axis {
            title: &t.resource,
            unit: super::unit_of(&t.resource),
        },
        &series,
    )
    .map_err(|e| Error::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_line_joins_only_undominated_points() {
        // (violations, slack): (2, 30) is beaten by (1, 20) on both.
        let (front, dominated) = pareto(&[(2.0, 30.0), (0.5, 40.0), (1.0, 20.0), (3.0, 10.0)]);
        assert_eq!(front, vec![(0.5, 40.0), (1.0, 20.0), (3.0, 10.0)]);
        assert_eq!(dominated, vec![(2.0, 30.0)]);
        // Equal violations: only the lower slack is on the front.
        let (front, dominated) = pareto(&[(1.0, 20.0), (1.0, 25.0)]);
        assert_eq!((front, dominated), (vec![(1.0, 20.0)], vec![(1.0, 25.0)]));
    }

    #[test]
    fn every_strategy_has_a_colour_of_its_own() {
        let colours: std::collections::HashSet<_> = crate::strategy::STRATEGIES
            .iter()
            .map(|n| strategy_color(n.parse().expect("a strategy")))
            .collect();
        assert_eq!(colours.len(), crate::strategy::STRATEGIES.len());
    }

    #[test]
    fn csv_has_a_header_from_the_row_and_one_line_per_row() {
        let row = |strategy, resource: &str| BacktestRow {
            strategy,
            resource: resource.into(),
            relative_slack: 0.5,
            absolute_slack: 1.25,
            violation_rate: 0.01,
            oom_events: 2,
            changes: 3,
            samples: 40,
            fallback_share: 0.0,
            model_share: 0.0,
        };
        let report = BacktestReport {
            rows: vec![row(Strategy::Max, "cpu"), row(Strategy::Plan, "memory")],
            task_ids: vec!["t1".into()],
            traces: Vec::new(),
            split: 0.0,
            recorded_oom_kills: 0,
            frontier: Vec::new(),
        };
        let csv = backtest(&report, TableFormat::Csv).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines,
            [
                "strategy,resource,relative_slack,absolute_slack,violation_rate,oom_events,changes,samples,fallback_share,model_share",
                "max,cpu,0.5,1.25,0.01,2,3,40,0.0,0.0",
                "plan,memory,0.5,1.25,0.01,2,3,40,0.0,0.0",
            ]
        );
        let json: serde_json::Value =
            serde_json::from_str(&backtest(&report, TableFormat::Json).unwrap()).unwrap();
        assert_eq!(json["rows"][1]["strategy"], "plan");
        assert_eq!(json["task_ids"][0], "t1");
    }
}
