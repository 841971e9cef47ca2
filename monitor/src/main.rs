//! `headroom-monitor`: a service's real usage against the model's quantile
//! band and its allocation, live in the terminal (ratatui; q or Esc quits)
//! or, with `--png FILE` / `--svg FILE`, as a chart of the task.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use headroom_monitor::{Frame, Selection, gather};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Style},
    symbols::Marker,
    text::Line,
    widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph},
};

/// Shows a service's real usage against the predicted quantile band and
/// the current allocation.
#[derive(Debug, Parser)]
#[command(name = "headroom-monitor", version)]
struct Cli {
    #[command(flatten)]
    selection: Selection,
    /// Write the chart as PNG and exit.
    #[arg(long, env = "HEADROOM_MONITOR_PNG", conflicts_with = "svg")]
    png: Option<PathBuf>,
    /// Write the chart as SVG and exit.
    #[arg(long, env = "HEADROOM_MONITOR_SVG")]
    svg: Option<PathBuf>,
    /// Refresh period of the live view.
    #[arg(long, env = "HEADROOM_MONITOR_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    every: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!(
            "headroom-monitor: {}",
            headroom_options::one_line(e.as_ref())
        );
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let sel = &cli.selection;
    if let Some(path) = cli.png.as_ref().or(cli.svg.as_ref()) {
        let frame = gather(sel).await?;
        for note in &frame.notes {
            eprintln!("headroom-monitor: {note}");
        }
        headroom_charts::line_chart(
            path,
            &frame.title(&sel.service, &sel.resource),
            headroom_charts::Axis::plain("seconds into the task"),
            headroom_charts::Axis {
                title: &sel.resource,
                unit: headroom_charts::Unit::parse(&frame.unit),
            },
            &frame.series(),
        )?;
        eprintln!(
            "{}: {} samples, {} predicted quantiles{}",
            path.display(),
            frame.used.len(),
            frame.predicted.len(),
            frame
                .allocation
                .map(|a| format!(
                    ", allocation {}",
                    headroom_charts::Unit::parse(&frame.unit).format(a)
                ))
                .unwrap_or_default()
        );
        return Ok(());
    }
    live(sel, cli.every).await
}

async fn live(sel: &Selection, every: Duration) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    // The live view needs a terminal; without one (a pipe, CI) say what to
    // do instead of letting the terminal library panic.
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the live view needs a terminal; without one, write a chart with --png FILE or --svg FILE"
        );
    }
    let mut terminal = ratatui::try_init().map_err(|e| {
        anyhow::anyhow!("cannot open the terminal ({e}); use --png FILE or --svg FILE")
    })?;
    let result = async {
        loop {
            let frame = gather(sel).await;
            terminal.draw(|f| draw(f, sel, &frame))?;
            if event::poll(every)?
                && let Event::Key(k) = event::read()?
                && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL)))
            {
                return anyhow::Ok(());
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

fn draw(f: &mut ratatui::Frame<'_>, sel: &Selection, frame: &anyhow::Result<Frame>) {
    let [chart_area, status_area] =
        Layout::vertical([Constraint::Min(8), Constraint::Length(3)]).areas(f.area());
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) => {
            f.render_widget(
                Paragraph::new(format!("{e:#}")).block(Block::bordered().title("headroom-monitor")),
                f.area(),
            );
            return;
        }
    };
    let series = frame.series();
    let colors = [
        Color::White,
        Color::Cyan,
        Color::Yellow,
        Color::Magenta,
        Color::Red,
    ];
    let datasets: Vec<Dataset<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Dataset::default()
                .name(s.label.clone())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(if s.label == "allocation" {
                    Color::Red
                } else {
                    colors[i % 4]
                }))
                .data(&s.points)
        })
        .collect();
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x1, mut y1) = (1.0f64, 0.0f64);
    for (x, y) in points {
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let unit = headroom_charts::Unit::parse(&frame.unit);
    let scale = unit.scale(y1);
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(frame.title(&sel.service, &sel.resource)))
        .x_axis(
            Axis::default()
                .title("seconds into the task")
                .bounds([0.0, x1])
                .labels([Line::from("0"), Line::from(format!("{x1:.0}"))]),
        )
        .y_axis(
            Axis::default()
                .title(format!("{} ({})", sel.resource, scale.name))
                .bounds([0.0, y1])
                .labels([
                    Line::from("0"),
                    Line::from(scale.label(y1 / 2.0)),
                    Line::from(scale.label(y1)),
                ]),
        );
    f.render_widget(chart, chart_area);
    let last = frame.used.last().map(|p| p.1);
    let status = format!(
        "mix {} | last {} | allocation {} | model {} | {} samples{}  (q quits)",
        frame.mix.join(","),
        last.map_or("-".into(), |v| unit.format(v)),
        frame.allocation.map_or("-".into(), |a| unit.format(a)),
        if frame.model_version.is_empty() {
            "-"
        } else {
            &frame.model_version
        },
        frame.used.len(),
        frame
            .notes
            .iter()
            .map(|n| format!(" | {n}"))
            .collect::<String>()
    );
    f.render_widget(Paragraph::new(status).block(Block::bordered()), status_area);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;

    #[test]
    fn every_option_is_also_an_environment_variable() {
        use clap::CommandFactory as _;
        headroom_options::assert_every_option_has_env(&Cli::command());
    }

    fn screen(frame: &anyhow::Result<Frame>) -> String {
        let sel = Selection {
            service: "cache".into(),
            resource: "memory".into(),
            task: None,
            collector: String::new(),
            predictor: String::new(),
            allocator: String::new(),
            strategy: "percentile".into(),
            tls: Default::default(),
        };
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
        terminal.draw(|f| draw(f, &sel, frame)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        buffer.content().iter().map(|c| c.symbol()).collect()
    }

    #[test]
    fn the_live_view_draws_usage_prediction_and_allocation() {
        let frame = Frame {
            task: "t-1".into(),
            mix: vec!["cache".into(), "cruncher".into()],
            ended: false,
            unit: "bytes".into(),
            used: vec![(0.0, 1e8), (10.0, 2e8), (20.0, 2.5e8)],
            predicted: vec![(0.5, vec![(0.0, 1.1e8), (20.0, 2.4e8)])],
            model_version: "v7".into(),
            allocation: Some(3e8),
            notes: vec![],
        };
        let text = screen(&Ok(frame));
        assert!(
            text.contains("cache memory in task t-1 (running)"),
            "{text}"
        );
        assert!(text.contains("allocation 286Mi"), "{text}");
        assert!(text.contains("last 238Mi"), "{text}");
        assert!(text.contains("memory (MiB)"), "{text}");
        assert!(!text.contains("300000000"), "{text}");
        assert!(text.contains("model v7"), "{text}");
        assert!(text.contains("3 samples"), "{text}");
        let text = screen(&Err(anyhow::anyhow!("no task ran \"cache\"")));
        assert!(text.contains("no task ran"), "{text}");
    }
}
