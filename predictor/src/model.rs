//! A loaded model: the ONNX Runtime session and the [`ModelSpec`] read from
//! the file's own metadata, checked against the graph by a probe run before
//! it may serve.

use std::{path::Path, sync::Mutex};

use chrono::{DateTime, Utc};
use headroom_model::{INPUT, METADATA_KEY, ModelSpec, OUTPUT};
use ort::{session::Session, value::TensorRef};

use crate::error::{Error, Result};

/// A model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    /// How to encode and decode.
    pub spec: ModelSpec,
    /// File it came from.
    pub path: String,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
    /// `Session::run` needs exclusive access; inference runs on the
    /// blocking pool, one batch at a time per model.
    session: Mutex<Session>,
}

/// Makes the ONNX Runtime library at `dylib` the one every session uses.
pub fn init_runtime(dylib: Option<&Path>) -> Result<()> {
    let builder = match dylib {
        Some(p) => {
            if !p.exists() {
                return Err(Error::Runtime(format!(
                    "no ONNX Runtime library at {} (ORT_DYLIB_PATH)",
                    p.display()
                )));
            }
            ort::init_from(p.to_string_lossy())
        }
        None => ort::init(),
    };
    builder
        .commit()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    Ok(())
}

impl LoadedModel {
    /// Loads and checks a model file. A file that is missing is
    /// [`Error::NotFound`]; one that is not a Headroom model, or whose graph
    /// does not match its metadata, is [`Error::BadModel`].
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("no model file at {shown}")),
            _ => Error::BadModel(format!("cannot read {shown}: {e}")),
        })?;
        let bad = |m: String| Error::BadModel(format!("{shown}: {m}"));
        let session = Session::builder()
            .and_then(|b| b.commit_from_memory(&bytes))
            .map_err(|e| bad(format!("ONNX Runtime refused it: {e}")))?;
        let json = session
            .metadata()
            .and_then(|m| m.custom(METADATA_KEY))
            .map_err(|e| bad(e.to_string()))?
            .ok_or_else(|| {
                bad(format!(
                    "no {METADATA_KEY:?} metadata: not a Headroom model"
                ))
            })?;
        let spec = ModelSpec::from_json(&json).map_err(|e| bad(e.to_string()))?;
        let model = Self {
            spec,
            path: shown.clone(),
            loaded_at: Utc::now(),
            session: Mutex::new(session),
        };
        // One row of zeros must give one row of quantiles.
        let probe = model
            .run(&vec![0.0; model.spec.width()], 1)
            .map_err(|e| bad(format!("probe run failed: {e}")))?;
        if probe.len() != model.spec.quantiles.len() {
            return Err(bad(format!(
                "the graph gives {} outputs per row, the metadata {} quantiles",
                probe.len(),
                model.spec.quantiles.len()
            )));
        }
        Ok(model)
    }

    /// Runs `rows` encoded rows; returns `[rows, quantiles]` row-major,
    /// scaled (decode with [`ModelSpec::decode`]).
    pub fn run(&self, features: &[f32], rows: usize) -> Result<Vec<f32>> {
        let input = ndarray::ArrayView2::from_shape((rows, self.spec.width()), features)
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| Error::Runtime("a previous inference panicked".into()))?;
        let tensor =
            TensorRef::from_array_view(input).map_err(|e| Error::Runtime(e.to_string()))?;
        let outputs = session
            .run(ort::inputs![INPUT => tensor])
            .map_err(|e| Error::Runtime(e.to_string()))?;
        let out = outputs[OUTPUT]
            .try_extract_array::<f32>()
            .map_err(|e| Error::Runtime(e.to_string()))?;
        Ok(out.iter().copied().collect())
    }
}
