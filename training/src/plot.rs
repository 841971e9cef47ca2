//! The loss curve of a training run (`loss.png`), drawn by
//! [`headroom_charts`].

use std::path::Path;

use headroom_charts::{Axis, PALETTE, Series, line_chart};

use crate::{Error, Result, train::EpochLoss};

/// The loss curve of a run: training and validation pinball loss per epoch.
pub fn loss_plot(path: &Path, history: &[EpochLoss]) -> Result<()> {
    let series = |label: &str, color, f: fn(&EpochLoss) -> f64| Series {
        label: label.into(),
        points: history.iter().map(|e| (e.epoch as f64, f(e))).collect(),
        color,
        joined: true,
    };
    line_chart(
        path,
        "Headroom usage model: pinball loss",
        Axis::plain("epoch"),
        Axis::plain("pinball loss (scaled)"),
        &[
            series("train", PALETTE[0], |e| e.train),
            series("validation (held-out tasks)", PALETTE[1], |e| e.validation),
        ],
    )
    .map_err(|e| Error::Plot(e.0))
}
