//! The report as one HTML document: inline CSS, an inline script that
//! records errors and checks that every chart rendered (for the browser
//! test: `data-charts`, `data-charts-rendered`, `data-errors` on `<body>`),
//! inline SVG charts. Numbers are written as people read them
//! ([`crate::render::human`]) with their base-unit value in `data-value`.

use std::fmt::Write as _;

use headroom_charts::{Axis, PALETTE, Series};

use super::Report;
use crate::{
    backtest::Trace,
    error::{Error, Result},
    render::{human, unit_of},
};

const STYLE: &str = "
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}.meta{color:#666}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.how{color:#555;font-size:.85em;max-width:480px}
.notes{background:#fff6e0;border:1px solid #f0c36d;padding:.5em 1em}
.usage{background:#f4f6f8;padding:.4em .8em;display:inline-block}
.timeline{display:flex;height:2.2em;border:1px solid #bbb;margin:.3em 0 1em}
.timeline div{border-right:1px solid #fff;background:#1f77b4;color:#fff;font-size:.8em;overflow:hidden;white-space:nowrap;padding:.5em .3em;box-sizing:border-box}
.timeline div:nth-child(even){background:#4a90c8}
figure.chart{margin:.5em 0 1.5em}figure.chart svg{max-width:100%;height:auto}
";

const SCRIPT: &str = "
window.headroomErrors=[];
window.addEventListener('error',function(e){window.headroomErrors.push(String(e.message));});
(function(){var error=console.error;console.error=function(){window.headroomErrors.push(Array.prototype.join.call(arguments,' '));error.apply(console,arguments);};})();
window.addEventListener('load',function(){
  var charts=document.querySelectorAll('figure.chart svg'),ok=0;
  charts.forEach(function(svg){var b=svg.getBBox();if(b.width>0&&b.height>0&&svg.querySelector('rect,path,polyline,line'))ok++;});
  document.body.dataset.charts=String(charts.length);
  document.body.dataset.chartsRendered=String(ok);
  document.body.dataset.errors=window.headroomErrors.join(' | ');
});
";

/// `text` safe inside HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number cell: the value as people read it, its base-unit value in
/// `data-value` under `key`.
fn amount(key: &str, resource: &str, value: f64) -> String {
    format!(
        "<td class=\"num\" data-key=\"{}\" data-value=\"{value}\">{}</td>",
        escape(key),
        escape(&human(resource, value))
    )
}

/// A share cell (slack, risk, violation rate): a percentage, the fraction
/// in `data-value`.
fn share(key: &str, value: f64) -> String {
    format!(
        "<td class=\"num\" data-key=\"{}\" data-value=\"{value}\">{:.1} %</td>",
        escape(key),
        value * 100.0
    )
}

/// A count cell.
fn count(key: &str, value: u64) -> String {
    format!(
        "<td class=\"num\" data-key=\"{}\" data-value=\"{value}\">{value}</td>",
        escape(key)
    )
}

/// The page (see the module doc).
///
/// Errors: a chart that cannot be drawn (nothing to plot).
pub fn html(report: &Report) -> Result<String> {
    let mut out = String::new();
    let title = format!("Headroom report: {}", report.subject);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script></head>\n<body>\n<h1>{}</h1>\n<p class=\"meta\">Generated {} by headroom-allocator. Requests and limits are what one replica should get; slack is the expected share of the request left unused, risk the expected share of samples above the limit.</p>\n",
        escape(&title),
        escape(&title),
        report.generated_at.format("%Y-%m-%d %H:%M UTC")
    );
    if !report.notes.is_empty() {
        out.push_str("<div class=\"notes\"><strong>Not shown:</strong><ul>");
        for n in &report.notes {
            let _ = write!(out, "<li>{}</li>", escape(n));
        }
        out.push_str("</ul></div>\n");
    }
    services(&mut out, report)?;
    plans(&mut out, report)?;
    backtest(&mut out, report)?;
    out.push_str("</body></html>\n");
    Ok(out)
}

/// Per service and resource: usage, each strategy's answer, a bar chart.
fn services(out: &mut String, report: &Report) -> Result<()> {
    let mut keys: Vec<(&str, &str)> = report
        .recommendations
        .iter()
        .map(|r| (r.service.as_str(), r.resource.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    out.push_str("<h2>Recommendations</h2>\n");
    let mut last_service = "";
    for (service, resource) in keys {
        if service != last_service {
            let _ = writeln!(out, "<h3>{}</h3>", escape(service));
            last_service = service;
        }
        let _ = writeln!(out, "<h4>{}</h4>", escape(resource));
        let usage = report
            .usage
            .iter()
            .find(|u| u.service == service && u.resource == resource);
        if let Some(u) = usage {
            let k = |f: &str| format!("usage:{service}:{resource}:{f}");
            let cell = |f: &str, v: f64| {
                amount(&k(f), resource, v)
                    .replacen("<td class=\"num\"", "<span", 1)
                    .replace("</td>", "</span>")
            };
            let _ = writeln!(
                out,
                "<p class=\"usage\">Current usage over {} samples: median {}, p95 {}, max {}</p>",
                u.samples,
                cell("p50", u.p50),
                cell("p95", u.p95),
                cell("max", u.max)
            );
        }
        out.push_str("<table><tr><th>strategy</th><th class=\"num\">request</th><th class=\"num\">limit</th><th class=\"num\">expected slack</th><th class=\"num\">risk</th><th>how</th></tr>\n");
        let mine: Vec<_> = report
            .recommendations
            .iter()
            .filter(|r| r.service == service && r.resource == resource)
            .collect();
        for r in &mine {
            let k = |f: &str| format!("rec:{}:{service}:{resource}:{f}", r.strategy.name());
            let _ = writeln!(
                out,
                "<tr><td>{}</td>{}{}{}{}<td class=\"how\">{}</td></tr>",
                r.strategy.name(),
                amount(&k("request"), resource, r.alloc.request),
                amount(&k("limit"), resource, r.alloc.limit),
                share(&k("expected_slack"), r.alloc.expected_slack),
                share(&k("violation_risk"), r.alloc.violation_risk),
                escape(&r.alloc.detail)
            );
        }
        out.push_str("</table>\n");
        let mut bars: Vec<(String, f64, (u8, u8, u8))> = Vec::new();
        if let Some(u) = usage {
            for (label, v) in [
                ("usage p50", u.p50),
                ("usage p95", u.p95),
                ("usage max", u.max),
            ] {
                bars.push((label.into(), v, (120, 120, 120)));
            }
        }
        for r in &mine {
            bars.push((
                format!("{} request", r.strategy.name()),
                r.alloc.request,
                crate::render::strategy_color(r.strategy),
            ));
        }
        let _ = writeln!(
            out,
            "<figure class=\"chart\">{}<figcaption>{} {}: current usage against each strategy's request</figcaption></figure>",
            bar_chart(resource, &bars),
            escape(service),
            escape(resource)
        );
    }
    Ok(())
}

/// Horizontal bars from 0, labelled in the resource's unit.
fn bar_chart(resource: &str, bars: &[(String, f64, (u8, u8, u8))]) -> String {
    const LABEL: f64 = 160.0;
    const WIDTH: f64 = 460.0;
    const ROW: f64 = 24.0;
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let height = ROW * bars.len() as f64 + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"{height}\" viewBox=\"0 0 720 {height}\" font-family=\"sans-serif\" font-size=\"13\">"
    );
    for (i, (label, value, (r, g, b))) in bars.iter().enumerate() {
        let y = 5.0 + i as f64 * ROW;
        let w = if top > 0.0 {
            (value / top * WIDTH).max(1.0)
        } else {
            1.0
        };
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{LABEL}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"rgb({r},{g},{b})\"/><text x=\"{:.1}\" y=\"{}\">{}</text>",
            LABEL - 8.0,
            y + 15.0,
            escape(label),
            ROW - 6.0,
            LABEL + w + 6.0,
            y + 15.0,
            escape(&human(resource, *value))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The plan: a timeline of segments per service and resource, a step
/// chart, and the segments' table.
fn plans(out: &mut String, report: &Report) -> Result<()> {
    let Some(plan) = &report.plan else {
        return Ok(());
    };
    let _ = writeln!(
        out,
        "<h2>Plan over the task ({} s horizon)</h2>\n<p>At most a few in-place resizes: each segment's request from its start, in seconds into the task.</p>",
        plan.horizon_seconds.round()
    );
    for p in &plan.plans {
        let (service, resource) = (&p.recommendation.service, &p.recommendation.resource);
        let _ = writeln!(out, "<h3>{} {}</h3>", escape(service), escape(resource));
        let span = p.segments.last().map_or(1.0, |s| s.end).max(1.0);
        out.push_str("<div class=\"timeline\">");
        for s in &p.segments {
            let _ = write!(
                out,
                "<div style=\"width:{:.3}%\" title=\"{:.0}–{:.0} s: request {}\">{}</div>",
                ((s.end - s.start) / span * 100.0).max(0.5),
                s.start,
                s.end,
                escape(&human(resource, s.request)),
                escape(&human(resource, s.request))
            );
        }
        out.push_str("</div>\n<table><tr><th class=\"num\">from (s)</th><th class=\"num\">to (s)</th><th class=\"num\">request</th><th class=\"num\">limit</th></tr>\n");
        for (i, s) in p.segments.iter().enumerate() {
            let k = |f: &str| format!("plan:{service}:{resource}:{i}:{f}");
            let _ = writeln!(
                out,
                "<tr><td class=\"num\" data-key=\"{}\" data-value=\"{}\">{:.0}</td><td class=\"num\" data-key=\"{}\" data-value=\"{}\">{:.0}</td>{}{}</tr>",
                escape(&k("start_seconds")),
                s.start,
                s.start,
                escape(&k("end_seconds")),
                s.end,
                s.end,
                amount(&k("request"), resource, s.request),
                amount(&k("limit"), resource, s.limit)
            );
        }
        out.push_str("</table>\n");
        let steps: Vec<(f64, f64)> = p
            .segments
            .iter()
            .flat_map(|s| [(s.start, s.request), (s.end, s.request)])
            .collect();
        let chart = headroom_charts::line_chart_svg(
            &format!("{service} {resource}: planned request"),
            Axis::plain("seconds into the task"),
            Axis {
                title: resource,
                unit: unit_of(resource),
            },
            &[Series {
                label: "planned request".into(),
                points: steps,
                color: PALETTE[0],
                joined: true,
            }],
        )
        .map_err(|e| Error::Chart {
            path: "report.html".into(),
            message: e.to_string(),
        })?;
        let _ = writeln!(out, "<figure class=\"chart\">{chart}</figure>");
    }
    Ok(())
}

/// The backtest's table and its traces as charts.
fn backtest(out: &mut String, report: &Report) -> Result<()> {
    let Some(b) = &report.backtest else {
        return Ok(());
    };
    let _ = writeln!(
        out,
        "<h2>Backtest</h2>\n<p>{} replayed; each strategy saw only the history before them. Absolute slack in core-hours (cpu), GiB-hours (memory), GiB (IO). OOM kills the agents recorded in these tasks: <span data-key=\"backtest:recorded_oom_kills\" data-value=\"{}\">{}</span>.</p>",
        headroom_units::count(b.task_ids.len() as u64, "held-out task"),
        b.recorded_oom_kills,
        b.recorded_oom_kills
    );
    out.push_str("<table><tr><th>strategy</th><th>resource</th><th class=\"num\">relative slack</th><th class=\"num\">absolute slack</th><th class=\"num\">violations</th><th class=\"num\">OOM events</th><th class=\"num\">changes</th><th class=\"num\">samples</th></tr>\n");
    for r in &b.rows {
        let k = |f: &str| format!("backtest:{}:{}:{f}", r.strategy.name(), r.resource);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td>{}<td class=\"num\" data-key=\"{}\" data-value=\"{}\">{:.3}</td>{}{}{}{}</tr>",
            r.strategy.name(),
            escape(&r.resource),
            share(&k("relative_slack"), r.relative_slack),
            escape(&k("absolute_slack")),
            r.absolute_slack,
            r.absolute_slack,
            share(&k("violation_rate"), r.violation_rate),
            count(&k("oom_events"), r.oom_events),
            count(&k("changes"), r.changes),
            count(&k("samples"), r.samples)
        );
    }
    out.push_str("</table>\n");
    for t in &b.traces {
        let _ = writeln!(out, "<figure class=\"chart\">{}</figure>", trace_chart(t)?);
    }
    Ok(())
}

/// Usage of a traced series against every strategy's request.
fn trace_chart(t: &Trace) -> Result<String> {
    let series = crate::render::trace_series(t);
    headroom_charts::line_chart_svg(
        &format!("{} {} in task {}", t.service, t.resource, t.task_id),
        Axis::plain("seconds into the task"),
        Axis {
            title: &t.resource,
            unit: unit_of(&t.resource),
        },
        &series,
    )
    .map_err(|e| Error::Chart {
        path: "report.html".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_bars_start_at_zero() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let svg = bar_chart(
            "memory",
            &[
                ("usage max".into(), 248_153_481.0, (0, 0, 0)),
                ("max request".into(), 0.0, (1, 1, 1)),
            ],
        );
        assert!(svg.contains(">237Mi<"), "{svg}");
        assert!(
            svg.contains("width=\"460.0\""),
            "the largest bar is full width: {svg}"
        );
        assert_eq!(
            amount("k", "cpu", 0.25),
            "<td class=\"num\" data-key=\"k\" data-value=\"0.25\">250m</td>"
        );
    }
}
