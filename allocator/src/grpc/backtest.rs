//! Protobuf <-> domain for backtests: the request as asked, the report as
//! answered, both ways.

use headroom_proto::{resource, v1};

use super::convert::{overrides, params, seconds_of, timestamp};
use crate::{
    backtest::{
        BacktestAsk, BacktestReport, BacktestRow, FrontierPoint, StrategyTrace, Sweep, Trace,
    },
    error::Result,
};

/// A backtest request as asked (strategies parsed by name).
pub fn ask(r: v1::BacktestRequest) -> Result<BacktestAsk> {
    Ok(BacktestAsk {
        strategies: r
            .strategies
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?,
        split: r.split.as_ref().map(seconds_of),
        task_ids: r.task_ids,
        services: r.services,
        resources: r.resources,
        params: overrides(r.params)?,
        max_tasks: (r.max_tasks > 0).then_some(r.max_tasks as usize),
        trace_services: r.trace_services,
        sweep: r.sweep.map(|w| {
            let given = Sweep {
                target_violation_rates: w.target_violation_rates,
                percentiles: w.percentiles,
                margins: w.margins,
                overrun_weights: w.overrun_weights,
            };
            if given == Sweep::default() {
                Sweep::standard()
            } else {
                given
            }
        }),
    })
}

/// A backtest request on the wire.
pub fn request(a: &BacktestAsk) -> v1::BacktestRequest {
    v1::BacktestRequest {
        strategies: a.strategies.iter().map(|s| s.name().to_string()).collect(),
        split: a.split.map(timestamp),
        task_ids: a.task_ids.clone(),
        services: a.services.clone(),
        resources: a.resources.clone(),
        params: Some(params(&a.params)),
        max_tasks: a.max_tasks.map_or(0, |m| m as u32),
        trace_services: a.trace_services.clone(),
        sweep: a.sweep.as_ref().map(|w| v1::Sweep {
            target_violation_rates: w.target_violation_rates.clone(),
            percentiles: w.percentiles.clone(),
            margins: w.margins.clone(),
            overrun_weights: w.overrun_weights.clone(),
        }),
    }
}

/// A backtest's report on the wire.
pub fn response(r: &BacktestReport) -> v1::BacktestResponse {
    v1::BacktestResponse {
        rows: r
            .rows
            .iter()
            .map(|r| v1::BacktestRow {
                strategy: r.strategy.name().to_string(),
                resource: r.resource.clone(),
                relative_slack: r.relative_slack,
                absolute_slack: r.absolute_slack,
                violation_rate: r.violation_rate,
                oom_events: r.oom_events,
                changes: r.changes,
                samples: r.samples,
                fallback_share: r.fallback_share,
                model_share: r.model_share,
            })
            .collect(),
        task_ids: r.task_ids.clone(),
        traces: r
            .traces
            .iter()
            .map(|t| v1::BacktestTrace {
                task_id: t.task_id.clone(),
                service: t.service.clone(),
                resource: t.resource.clone(),
                seconds: t.seconds.clone(),
                used: t.used.clone(),
                strategies: t
                    .strategies
                    .iter()
                    .map(|s| v1::StrategyTrace {
                        strategy: s.strategy.name().to_string(),
                        request: s.request.clone(),
                        limit: s.limit.clone(),
                    })
                    .collect(),
                unit: resource::unit(&t.resource).unwrap_or_default().to_string(),
            })
            .collect(),
        split: Some(timestamp(r.split)),
        recorded_oom_kills: r.recorded_oom_kills,
        frontier: r
            .frontier
            .iter()
            .map(|p| v1::FrontierPoint {
                strategy: p.strategy.name().to_string(),
                setting: p.setting.clone(),
                resource: p.resource.clone(),
                violation_rate: p.violation_rate,
                relative_slack: p.relative_slack,
                oom_events: p.oom_events,
                fallback_share: p.fallback_share,
                model_share: p.model_share,
            })
            .collect(),
    }
}

/// A backtest's report from the wire.
pub fn report(r: v1::BacktestResponse) -> Result<BacktestReport> {
    Ok(BacktestReport {
        rows: r
            .rows
            .into_iter()
            .map(|r| {
                Ok(BacktestRow {
                    strategy: r.strategy.parse()?,
                    resource: r.resource,
                    relative_slack: r.relative_slack,
                    absolute_slack: r.absolute_slack,
                    violation_rate: r.violation_rate,
                    oom_events: r.oom_events,
                    changes: r.changes,
                    samples: r.samples,
                    fallback_share: r.fallback_share,
                    model_share: r.model_share,
                })
            })
            .collect::<Result<_>>()?,
        task_ids: r.task_ids,
        traces: r
            .traces
            .into_iter()
            .map(|t| {
                Ok(Trace {
                    strategies: t
                        .strategies
                        .into_iter()
                        .map(|s| {
                            Ok(StrategyTrace {
                                strategy: s.strategy.parse()?,
                                request: s.request,
                                limit: s.limit,
                            })
                        })
                        .collect::<Result<_>>()?,
                    task_id: t.task_id,
                    service: t.service,
                    resource: t.resource,
                    seconds: t.seconds,
                    used: t.used,
                })
            })
            .collect::<Result<_>>()?,
        split: r.split.as_ref().map_or(0.0, seconds_of),
        recorded_oom_kills: r.recorded_oom_kills,
        frontier: r
            .frontier
            .into_iter()
            .map(|p| {
                Ok(FrontierPoint {
                    strategy: p.strategy.parse()?,
                    setting: p.setting,
                    resource: p.resource,
                    violation_rate: p.violation_rate,
                    relative_slack: p.relative_slack,
                    oom_events: p.oom_events,
                    fallback_share: p.fallback_share,
                    model_share: p.model_share,
                })
            })
            .collect::<Result<_>>()?,
    })
}
