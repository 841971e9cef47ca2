//! Line charts drawn with plotters (PNG, SVG files or SVG strings):
//! training's loss curve, the allocator's backtest charts (usage against
//! each strategy's allocation), the monitor's finished-task charts and the
//! report page. Axes start at 0 and are labelled in the unit people read
//! (`headroom-units`: `memory (MiB)`, ticks `0 50 100`).
//!
//! Text needs a TrueType font. plotters' `ab_glyph` backend takes the font's
//! bytes, so the first of a few common system fonts (or `HEADROOM_FONT`) is
//! loaded at run time; without one the chart is drawn without its text.

use std::{path::Path, sync::OnceLock};

use plotters::prelude::*;

pub use headroom_units::{Scale, Unit};

/// A chart that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChartError(pub String);

/// Distinct line colours, in order of use.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (127, 127, 127),
    (23, 190, 207),
    (188, 189, 34),
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
    /// Whether the points are joined by a line; `false`: markers only
    /// (and no legend entry when `label` is empty).
    pub joined: bool,
}

/// One axis: what it measures and in which unit its values are.
#[derive(Debug, Clone, Copy)]
pub struct Axis<'a> {
    /// What the axis measures, e.g. `memory` or `seconds into the task`.
    pub title: &'a str,
    /// The unit of the values (base units); tick labels and the axis title
    /// use the scale the largest value needs (`memory (MiB)`).
    pub unit: Unit,
}

impl<'a> Axis<'a> {
    /// An axis of plain numbers (epochs, seconds, losses).
    pub fn plain(title: &'a str) -> Self {
        Self {
            title,
            unit: Unit::Other(""),
        }
    }
}

const SIZE: (u32, u32) = (900, 540);

/// Draws `series` as lines into `path`: SVG when it ends in `.svg`, else
/// PNG. The y axis starts at 0 (below it only for negative values), so a
/// small gap between two lines looks small.
///
/// Errors: nothing to plot, or the file cannot be written.
pub fn line_chart(
    path: &Path,
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    series: &[Series],
) -> Result<(), ChartError> {
    let fail = |e: String| ChartError(format!("cannot draw {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "svg") {
        draw(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            title,
            x,
            y,
            series,
        )
    } else {
        draw(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            title,
            x,
            y,
            series,
        )
    }
    .map_err(fail)
}

/// The same chart as [`line_chart`], as an SVG document in a string (for
/// pages that inline their charts). Text is SVG `<text>`, drawn by the
/// viewer's fonts.
///
/// Errors: nothing to plot.
pub fn line_chart_svg(
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    series: &[Series],
) -> Result<String, ChartError> {
    let mut out = String::new();
    draw(
        SVGBackend::with_string(&mut out, SIZE).into_drawing_area(),
        title,
        x,
        y,
        series,
    )
    .map_err(|e| ChartError(format!("cannot draw {title}: {e}")))?;
    Ok(out)
}

/// An axis title with its scale: `memory (MiB)`.
fn titled(axis: Axis<'_>, scale: &Scale) -> String {
    if scale.name.is_empty() || axis.title.contains(&format!("({})", scale.name)) {
        axis.title.to_string()
    } else {
        format!("{} ({})", axis.title, scale.name)
    }
}

/// The corner of the plot (x in `xs`, y in `ys`) whose box of 40 % × 40 %
/// of the axes holds the fewest points: where the legend covers none or
/// least (a frontier's dots gather lower right as often as not). Ties go
/// to the lower right, then upper right, upper left, lower left.
fn emptiest_corner(
    points: impl Iterator<Item = (f64, f64)>,
    xs: (f64, f64),
    ys: (f64, f64),
) -> SeriesLabelPosition {
    let (wx, wy) = ((xs.1 - xs.0) * 0.4, (ys.1 - ys.0) * 0.4);
    let mut counts = [0usize; 4];
    for (x, y) in points.filter(|(a, b)| a.is_finite() && b.is_finite()) {
        let (right, left) = (x >= xs.1 - wx, x <= xs.0 + wx);
        let (upper, lower) = (y >= ys.1 - wy, y <= ys.0 + wy);
        for (i, inside) in [right && lower, right && upper, left && upper, left && lower]
            .into_iter()
            .enumerate()
        {
            counts[i] += usize::from(inside);
        }
    }
    let best = (0..4).min_by_key(|i| (counts[*i], *i)).unwrap_or(0);
    [
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    series: &[Series],
) -> Result<(), String> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (px, py) in points.filter(|(a, b)| a.is_finite() && b.is_finite()) {
        x0 = x0.min(*px);
        x1 = x1.max(*px);
        y0 = y0.min(*py);
        y1 = y1.max(*py);
    }
    if x0 > x1 {
        return Err("nothing to plot".into());
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    // From 0: a 2 % gap must not look like a cliff.
    let y0 = y0.min(0.0);
    let y1 = if y1 > y0 {
        y1 + (y1 - y0) * 0.05
    } else {
        y0 + 1.0
    };
    let (x_scale, y_scale) = (
        x.unit.scale(x1.abs().max(x0.abs())),
        y.unit.scale(y1.abs().max(y0.abs())),
    );
    let text = font_ready();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 22))
            .x_label_area_size(45)
            .y_label_area_size(80);
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    let (x_title, y_title) = (titled(x, &x_scale), titled(y, &y_scale));
    let x_ticks = |v: &f64| x_scale.label(*v);
    let y_ticks = |v: &f64| y_scale.label(*v);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_title)
            .y_desc(y_title)
            .x_label_formatter(&x_ticks)
            .y_label_formatter(&y_ticks)
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14));
    } else {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    for s in series {
        let color = RGBColor(s.color.0, s.color.1, s.color.2);
        if s.joined {
            chart
                .draw_series(LineSeries::new(
                    s.points
                        .iter()
                        .copied()
                        .filter(|(a, b)| a.is_finite() && b.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
        }
        if s.points.len() <= 40 || !s.joined {
            // Few points are results (a frontier), not a signal: mark each.
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(|(a, b)| a.is_finite() && b.is_finite())
                        .map(|p| Circle::new(*p, 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        let drawn = chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(|e| e.to_string())?;
        if text && !s.label.is_empty() {
            drawn.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        let corner = emptiest_corner(
            series.iter().flat_map(|s| s.points.iter().copied()),
            (x0, x1),
            (y0, y1),
        );
        chart
            .configure_series_labels()
            .position(corner)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_where_the_points_are_not() {
        let corner = |points: &[(f64, f64)]| {
            format!(
                "{:?}",
                emptiest_corner(points.iter().copied(), (0.0, 10.0), (0.0, 100.0))
            )
        };
        // A frontier falling to the lower right: the legend goes upper right.
        let frontier = [(0.5, 90.0), (2.0, 60.0), (8.0, 35.0), (9.8, 30.0)];
        assert_eq!(corner(&frontier), "UpperRight");
        // Nothing anywhere: the usual lower right.
        assert_eq!(corner(&[]), "LowerRight");
        // Points in every corner but the lower left.
        let three = [(9.0, 5.0), (9.0, 95.0), (1.0, 95.0)];
        assert_eq!(corner(&three), "LowerLeft");
    }

    fn line(points: Vec<(f64, f64)>) -> Series {
        Series {
            label: "x".into(),
            points,
            color: PALETTE[0],
            joined: true,
        }
    }

    #[test]
    fn draws_a_png_and_refuses_an_empty_chart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let (x, y) = (Axis::plain("x"), Axis::plain("y"));
        line_chart(&path, "t", x, y, &[line(vec![(0.0, 1.0), (1.0, 2.0)])]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(line_chart(&path, "t", x, y, &[]).is_err());
        let svg = dir.path().join("c.svg");
        line_chart(&svg, "t", x, y, &[line(vec![(0.0, 1.0), (1.0, 2.0)])]).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    }

    #[test]
    fn the_y_axis_starts_at_zero_and_speaks_the_unit() {
        let memory = Axis {
            title: "memory",
            unit: Unit::Bytes,
        };
        // Two lines 2 % apart, far from 0.
        let svg = line_chart_svg(
            "t",
            Axis::plain("seconds into the task"),
            memory,
            &[
                line(vec![(0.0, 245e6), (60.0, 250e6)]),
                line(vec![(0.0, 250e6), (60.0, 255e6)]),
            ],
        )
        .unwrap();
        if font_ready() {
            assert!(svg.contains("memory (MiB)"), "whole axis title");
            assert!(svg.contains(">\n0\n</text>"), "the y axis starts at 0");
            assert!(!svg.contains("250000000"), "no raw bytes on the axis");
        }
    }
}
