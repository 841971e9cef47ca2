//! A loaded model: the ONNX Runtime session and the [`ModelSpec`] read from
//! the file's own metadata, checked against the graph by a probe run before
//! it may serve.
//!
//! Each model owns one inference thread that owns its session. Requests
//! hand it encoded rows through a channel; the thread takes every request
//! already waiting (and, when others are in flight, waits up to
//! [`InferenceOptions::batch_wait`] for more) and runs them as one `ort`
//! batch, then hands each request its own rows back. A lone request
//! therefore runs at once, and concurrent small requests share one run.
//! When the last handle on a model is dropped (after a reload, once the
//! requests still running on it finish), its thread ends.

use std::{
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use headroom_model::{INPUT, METADATA_KEY, ModelSpec, OUTPUT};
use ort::{
    session::{Session, builder::GraphOptimizationLevel},
    value::TensorRef,
};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How sessions run and how requests are batched.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceOptions {
    /// ONNX Runtime threads inside one operator. The model is a small MLP:
    /// one thread per run leaves the other cores to gRPC, and thread-pool
    /// hand-offs cost more than they save below a few thousand rows.
    pub intra_threads: usize,
    /// Rows gathered into one run; a larger single request runs alone.
    pub max_batch_rows: usize,
    /// Longest a run is held back for more requests once several are in
    /// flight; a lone request never waits. Zero (the default) still
    /// batches: requests that arrive while a run is going share the next
    /// one. A wait pays off only when runs are long against gRPC's own
    /// cost per request (`benches/serve.rs` measures both).
    pub batch_wait: Duration,
}

/// Rows gathered into one run unless `--max-batch-rows` says otherwise.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 4096;

impl Default for InferenceOptions {
    fn default() -> Self {
        Self {
            intra_threads: default_intra_threads(),
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            batch_wait: Duration::ZERO,
        }
    }
}

/// Half the machine's cores (at least one): the rest serve gRPC.
pub fn default_intra_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| (n.get() / 2).max(1))
        .unwrap_or(1)
}

/// One request's rows and where its answer goes.
struct Job {
    features: Vec<f32>,
    rows: usize,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// A model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    /// How to encode and decode.
    pub spec: ModelSpec,
    /// File it came from.
    pub path: String,
    /// When it was loaded.
    pub loaded_at: DateTime<Utc>,
    /// The inference thread's queue; dropping it ends the thread.
    jobs: mpsc::Sender<Job>,
}

/// What to do when ONNX Runtime cannot be loaded, said in every such error.
pub const RUNTIME_FIX: &str = "set ORT_DYLIB_PATH to libonnxruntime.so (`scripts/stack up` installs one and `.stack/env` sets the variable)";

/// Makes the ONNX Runtime library at `dylib` (or, without one, the
/// `libonnxruntime.so` the dynamic loader finds) the one every session
/// uses.
///
/// Errors: the file does not exist, or ONNX Runtime cannot be loaded from
/// it (not a library, a version `ort` cannot use), each in one line that
/// names the file and says what to do. `ort` panics when it cannot load
/// the library; that panic is caught here, silently, and becomes the
/// error, so a missing runtime never prints a backtrace.
pub fn init_runtime(dylib: Option<&Path>) -> Result<()> {
    if let Some(p) = dylib
        && !p.is_file()
    {
        return Err(Error::Runtime(format!(
            "no ONNX Runtime library at {}: {RUNTIME_FIX}",
            p.display()
        )));
    }
    let shown = dylib.map_or_else(
        || "libonnxruntime.so".to_string(),
        |p| p.display().to_string(),
    );
    let silent: Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> = Box::new(|_| {});
    let hook = std::panic::take_hook();
    std::panic::set_hook(silent);
    let committed = std::panic::catch_unwind(|| match dylib {
        Some(p) => ort::init_from(p.to_string_lossy()).commit(),
        None => ort::init().commit(),
    });
    std::panic::set_hook(hook);
    match committed {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::Runtime(format!(
            "cannot start {shown}: {e}; {RUNTIME_FIX}"
        ))),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the library could not be loaded");
            // ort's message repeats the path; keep the loader's reason.
            let why = why.rsplit("`: ").next().unwrap_or(why);
            Err(Error::Runtime(format!(
                "cannot load {shown} ({why}); {RUNTIME_FIX}"
            )))
        }
    }
}

/// Builds a session the way the predictor runs it.
pub fn session(bytes: &[u8], options: &InferenceOptions) -> ort::Result<Session> {
    Session::builder()?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(options.intra_threads.max(1))?
        .with_inter_threads(1)?
        // Spinning pool threads would burn the cores gRPC needs.
        .with_intra_op_spinning(false)?
        .commit_from_memory(bytes)
}

/// Runs `rows` rows of `width` features; `[rows, outputs]` row-major.
fn run_session(session: &mut Session, features: &[f32], rows: usize) -> Result<Vec<f32>> {
    let width = features.len().checked_div(rows).unwrap_or(0);
    let input = ndarray::ArrayView2::from_shape((rows, width), features)
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let tensor = TensorRef::from_array_view(input).map_err(|e| Error::Runtime(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![INPUT => tensor])
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let out = outputs[OUTPUT]
        .try_extract_array::<f32>()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    Ok(out.iter().copied().collect())
}

/// Takes the jobs to run together: `first`, everything already queued and,
/// when that shows other requests in flight, what arrives within the wait,
/// up to `max_rows` rows.
fn gather(first: Job, jobs: &mpsc::Receiver<Job>, options: &InferenceOptions) -> Vec<Job> {
    let mut rows = first.rows;
    let mut batch = vec![first];
    let mut deadline: Option<Instant> = None;
    while rows < options.max_batch_rows {
        let next = match jobs.try_recv() {
            Ok(job) => Some(job),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                if batch.len() < 2 || options.batch_wait.is_zero() {
                    None
                } else {
                    let until =
                        *deadline.get_or_insert_with(|| Instant::now() + options.batch_wait);
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        jobs.recv_timeout(left).ok()
                    }
                }
            }
        };
        let Some(job) = next else { break };
        rows += job.rows;
        batch.push(job);
    }
    batch
}

/// The inference thread: one session, one batch at a time.
fn serve_jobs(
    mut session: Session,
    jobs: mpsc::Receiver<Job>,
    outputs: usize,
    options: InferenceOptions,
) {
    let mut features = Vec::new();
    while let Ok(first) = jobs.recv() {
        let batch = gather(first, &jobs, &options);
        let rows: usize = batch.iter().map(|j| j.rows).sum();
        metrics::histogram!("headroom_predictor_batch_rows").record(rows as f64);
        metrics::histogram!("headroom_predictor_batch_requests").record(batch.len() as f64);
        metrics::counter!("headroom_predictor_predictions_total").increment(rows as u64);
        let started = Instant::now();
        let input: &[f32] = if let [job] = &batch[..] {
            &job.features
        } else {
            features.clear();
            for job in &batch {
                features.extend_from_slice(&job.features);
            }
            &features
        };
        let result = run_session(&mut session, input, rows);
        metrics::histogram!("headroom_predictor_inference_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(out) => {
                let mut at = 0;
                for job in batch {
                    let n = job.rows * outputs;
                    let _ = job.reply.send(Ok(out[at..at + n].to_vec()));
                    at += n;
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(Error::Runtime(e.to_string())));
                }
            }
        }
    }
}

impl LoadedModel {
    /// Loads and checks a model file and starts its inference thread. A
    /// file that is missing is [`Error::NotFound`]; one that is not a
    /// Headroom model, or whose graph does not match its metadata, is
    /// [`Error::BadModel`]. Call it off the async runtime (it blocks).
    pub fn load(path: &Path, options: &InferenceOptions) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("no model file at {shown}")),
            _ => Error::BadModel(format!("cannot read {shown}: {e}")),
        })?;
        let bad = |m: String| Error::BadModel(format!("{shown}: {m}"));
        let mut session =
            session(&bytes, options).map_err(|e| bad(format!("ONNX Runtime refused it: {e}")))?;
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
        // One row of zeros must give one row of quantiles.
        let probe = run_session(&mut session, &vec![0.0; spec.width()], 1)
            .map_err(|e| bad(format!("probe run failed: {e}")))?;
        if probe.len() != spec.quantiles.len() {
            return Err(bad(format!(
                "the graph gives {} outputs per row, the metadata {} quantiles",
                probe.len(),
                spec.quantiles.len()
            )));
        }
        let (jobs, queue) = mpsc::channel();
        let outputs = spec.quantiles.len();
        let options = options.clone();
        std::thread::Builder::new()
            .name("headroom-infer".into())
            .spawn(move || serve_jobs(session, queue, outputs, options))
            .map_err(|e| Error::Runtime(format!("cannot start the inference thread: {e}")))?;
        Ok(Self {
            spec,
            path: shown,
            loaded_at: Utc::now(),
            jobs,
        })
    }

    /// Runs `rows` encoded rows (`rows × width` features) in the model's
    /// next batch; returns `[rows, quantiles]` row-major, scaled (decode
    /// with [`ModelSpec::decode`]).
    pub async fn run(&self, features: Vec<f32>, rows: usize) -> Result<Vec<f32>> {
        if features.len() != rows * self.spec.width() {
            return Err(Error::Runtime(format!(
                "{} features for {rows} rows of width {}",
                features.len(),
                self.spec.width()
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                features,
                rows,
                reply,
            })
            .map_err(|_| Error::Runtime("the inference thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Runtime("the inference thread dropped a request".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(rows: usize) -> (Job, oneshot::Receiver<Result<Vec<f32>>>) {
        let (reply, answer) = oneshot::channel();
        (
            Job {
                features: vec![0.0; rows],
                rows,
                reply,
            },
            answer,
        )
    }

    #[test]
    fn a_lone_request_is_not_held_back() {
        let (tx, rx) = mpsc::channel();
        let options = InferenceOptions {
            batch_wait: Duration::from_secs(5),
            ..InferenceOptions::default()
        };
        let t = Instant::now();
        let batch = gather(job(1).0, &rx, &options);
        assert_eq!(batch.len(), 1);
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(tx);
    }

    #[test]
    fn queued_requests_join_one_batch_up_to_the_row_limit() {
        let (tx, rx) = mpsc::channel();
        let mut answers = Vec::new();
        for _ in 0..10 {
            let (j, a) = job(3);
            tx.send(j).unwrap();
            answers.push(a);
        }
        let options = InferenceOptions {
            max_batch_rows: 12,
            batch_wait: Duration::ZERO,
            ..InferenceOptions::default()
        };
        let batch = gather(job(3).0, &rx, &options);
        assert_eq!(batch.len(), 4, "3 + 3·3 rows reach the limit of 12");
        let rest = gather(rx.recv().unwrap(), &rx, &options);
        assert_eq!(rest.len(), 4);
    }

    #[test]
    fn with_others_in_flight_the_wait_gathers_late_arrivals() {
        let (tx, rx) = mpsc::channel();
        tx.send(job(1).0).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(job(1).0).unwrap();
        });
        let options = InferenceOptions {
            batch_wait: Duration::from_secs(2),
            ..InferenceOptions::default()
        };
        let batch = gather(job(1).0, &rx, &options);
        late.join().unwrap();
        assert_eq!(batch.len(), 3);
    }
}
