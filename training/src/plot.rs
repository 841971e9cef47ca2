//! PNG line charts drawn with plotters: the loss curve of a training run
//! (`loss.png`) and any other series-over-x chart.
//!
//! Text needs a TrueType font. plotters' `ab_glyph` backend takes the font's
//! bytes, so the first of a few common system fonts (or `HEADROOM_FONT`) is
//! loaded at run time; without one the chart is drawn without its text.

use std::{path::Path, sync::OnceLock};

use plotters::prelude::*;

use crate::{Error, Result, train::EpochLoss};

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font once; whether text can be drawn.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var("HEADROOM_FONT").ok();
        let bytes = from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_CANDIDATES)
            .find_map(|p| std::fs::read(p).ok());
        match bytes {
            Some(b) => {
                let b: &'static [u8] = Box::leak(b.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, b).is_ok()
            }
            None => {
                tracing::warn!(
                    "no TrueType font found (set HEADROOM_FONT); charts are drawn without text"
                );
                false
            }
        }
    })
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, by ascending x.
    pub points: Vec<(f64, f64)>,
    /// Line colour.
    pub color: RGBColor,
}

/// Draws `series` as lines into a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let fail = |e: String| Error::Plot(format!("cannot draw {}: {e}", path.display()));
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        return Err(fail("nothing to plot".into()));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let (y0, y1) = (y0.min(0.0).max(y0 - pad), y1 + pad);
    let text = font_ready();
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| fail(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_label).y_desc(y_label);
    } else {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw().map_err(|e| fail(e.to_string()))?;
    for s in series {
        let color = s.color;
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(e.to_string()))?;
        if text {
            drawn.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The loss curve of a run: training and validation pinball loss per epoch.
pub fn loss_plot(path: &Path, history: &[EpochLoss]) -> Result<()> {
    let series = |label: &str, color, f: fn(&EpochLoss) -> f64| Series {
        label: label.into(),
        points: history.iter().map(|e| (e.epoch as f64, f(e))).collect(),
        color,
    };
    line_chart(
        path,
        "Headroom usage model: pinball loss",
        "epoch",
        "pinball loss (scaled)",
        &[
            series("train", BLUE, |e| e.train),
            series("validation (held-out tasks)", RED, |e| e.validation),
        ],
    )
}
