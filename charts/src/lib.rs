//! PNG line charts drawn with plotters: training's loss curve, the
//! allocator's backtest charts (usage against each strategy's allocation)
//! and the monitor's finished-task charts.
//!
//! Text needs a TrueType font. plotters' `ab_glyph` backend takes the font's
//! bytes, so the first of a few common system fonts (or `HEADROOM_FONT`) is
//! loaded at run time; without one the chart is drawn without its text.

use std::{path::Path, sync::OnceLock};

use plotters::prelude::*;

/// A chart that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChartError(pub String);

/// Distinct line colours, in order of use.
pub const PALETTE: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (127, 127, 127),
];

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
    /// Line colour, RGB.
    pub color: (u8, u8, u8),
}

/// Draws `series` as lines into `path`: SVG when it ends in `.svg`, else
/// PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ChartError> {
    const SIZE: (u32, u32) = (900, 540);
    if path.extension().is_some_and(|e| e == "svg") {
        draw(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            path,
            title,
            x_label,
            y_label,
            series,
        )
    } else {
        draw(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            path,
            title,
            x_label,
            y_label,
            series,
        )
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ChartError> {
    let fail = |e: String| ChartError(format!("cannot draw {}: {e}", path.display()));
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
        let color = RGBColor(s.color.0, s.color.1, s.color.2);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(e.to_string()))?;
        if s.points.len() <= 40 {
            // Few points are results (a frontier), not a signal: mark each.
            chart
                .draw_series(s.points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| fail(e.to_string()))?;
        }
        let drawn = chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_and_refuses_an_empty_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let s = Series {
            label: "x".into(),
            points: vec![(0.0, 1.0), (1.0, 2.0)],
            color: PALETTE[0],
        };
        line_chart(&path, "t", "x", "y", &[s]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(line_chart(&path, "t", "x", "y", &[]).is_err());
        let svg = dir.path().join("c.svg");
        line_chart(
            &svg,
            "t",
            "x",
            "y",
            &[Series {
                label: "x".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
                color: PALETTE[1],
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    }
}
