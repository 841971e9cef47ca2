//! Headroom training: turns stored usage history into a network that
//! predicts quantiles of a service's usage from the task's mix of services,
//! the service, the resource and the seconds into the task, and exports it
//! as the `model.onnx` the predictor serves. Its history comes from the
//! store (`headroom-store`), a CSV dump, or the workload simulator.

pub mod dataset;
pub mod export;
pub mod network;
pub mod plot;
pub mod report;
pub mod train;

use std::path::{Path, PathBuf};

pub use dataset::Dataset;
pub use train::{TrainOptions, Trained};

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data cannot be used.
    #[error("{0}")]
    Data(String),
    /// Options that contradict each other or make no sense.
    #[error("{0}")]
    Options(String),
    /// A checkpoint that cannot be read or resumed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The ONNX model could not be written or read.
    #[error("ONNX model: {0}")]
    Export(String),
    /// A chart could not be drawn.
    #[error("{0}")]
    Plot(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The model contract refused something.
    #[error(transparent)]
    Model(#[from] headroom_model::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] headroom_store::Error),
    /// The simulator refused its options or could not write.
    #[error(transparent)]
    Simulate(#[from] headroom_simulator::Error),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `path` by having `write` fill a temporary file beside it, then
/// renaming it into place: readers see the old file or the new one, never a
/// partial one, and a failed write leaves the old file untouched.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Data(format!("{} is not a file path", path.display())))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where a training run writes what it produces.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// The ONNX model.
    pub model: PathBuf,
    /// The validation report as JSON.
    pub report: Option<PathBuf>,
    /// The loss curve as PNG.
    pub loss_plot: Option<PathBuf>,
    /// Weights and optimizer state, written after every epoch.
    pub checkpoint: Option<PathBuf>,
    /// Resume from `checkpoint` when it exists.
    pub resume: bool,
}

/// A finished run: the network (its spec now carrying the validation
/// metrics) and the report.
#[derive(Debug)]
pub struct Outcome {
    /// The trained network and its encoding.
    pub trained: Trained,
    /// Validation figures against the baselines.
    pub report: report::Report,
}

/// Trains on `data`, scores the result on the held-out tasks, and writes
/// the model, the report, the loss plot and the checkpoint.
pub fn fit_and_export(
    data: &Dataset,
    opts: &TrainOptions,
    outputs: &Outputs,
    version: &str,
    bucket_seconds: f64,
    progress: bool,
) -> Result<Outcome> {
    let checkpointing = train::Checkpointing {
        path: outputs.checkpoint.as_deref(),
        resume: outputs.resume,
    };
    let mut trained = train::train(data, opts, checkpointing, version, progress)?;
    let report = report::evaluate(data, &trained, bucket_seconds)?;
    trained.spec.metrics = report.metrics();
    export::write_model(&outputs.model, &trained.net, &trained.spec)?;
    if let Some(path) = &outputs.report {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Data(e.to_string()))?;
        write_atomically(path, |tmp| {
            std::fs::write(tmp, &json).map_err(|e| Error::io(tmp, e))
        })?;
    }
    if let Some(path) = &outputs.loss_plot {
        plot::loss_plot(path, &trained.history)?;
    }
    Ok(Outcome { trained, report })
}
