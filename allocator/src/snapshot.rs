//! The history snapshot: every series' summary, rebuilt in the background
//! so history-based answers need not read samples on every request.

use std::{sync::Arc, time::Instant};

use tokio::sync::RwLock;

use crate::{history::Summaries, replay::ModelCandidates};

/// Every series' history summarised, as of `built`.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was built, to say how old an answer's history is.
    pub built: Instant,
    /// The summaries.
    pub series: Summaries,
    /// `auto`'s model-based candidates evaluated for every usage series
    /// with the served model and the default parameters; `None` when no
    /// model answered at the rebuild.
    pub models: Option<Arc<ModelCandidates>>,
    /// When `models` were evaluated (they are kept across rebuilds for
    /// [`crate::allocate::MODEL_CANDIDATES_EVERY`]).
    pub models_at: Option<Instant>,
}

/// The latest snapshot, shared by the rebuilder and the requests.
pub type Shared = Arc<RwLock<Option<Arc<Snapshot>>>>;

/// Where a history-based answer's samples came from.
#[derive(Debug)]
pub enum Source {
    /// The latest snapshot.
    Snapshot(Arc<Snapshot>),
    /// Read for this request.
    Read(Summaries),
}

impl Source {
    /// The summaries, wherever they came from.
    pub fn summaries(&self) -> &Summaries {
        match self {
            Self::Snapshot(s) => &s.series,
            Self::Read(s) => s,
        }
    }

    /// What an answer's detail says of where its history came from.
    pub fn note(&self) -> String {
        match self {
            Self::Snapshot(s) => format!(
                " (from the history snapshot of {:.0} s ago)",
                s.built.elapsed().as_secs_f64()
            ),
            Self::Read(_) => String::new(),
        }
    }
}

/// The snapshot in `shared` when it covers every series of `services` ×
/// `resources` and was built with `half_life`.
pub async fn covering(
    shared: &Shared,
    services: &[String],
    resources: &[String],
    half_life: f64,
) -> Option<Arc<Snapshot>> {
    let snap = shared.read().await.clone()?;
    let covered = services.iter().all(|s| {
        resources
            .iter()
            .all(|r| snap.series.contains_key(&(s.clone(), r.clone())))
    });
    let same_decay = snap
        .series
        .values()
        .next()
        .is_none_or(|x| x.half_life() == half_life);
    (covered && same_decay).then_some(snap)
}
