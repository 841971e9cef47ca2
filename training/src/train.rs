//! The training loop: targets scaled per series (by the robust scale of the
//! series' context, [`SeriesContext::scale`]), minibatches from a seeded
//! shuffle with the service's identity hidden from a share of rows (so the
//! network learns to predict a service it never saw from its context),
//! AdamW on the pinball loss, early stopping on the held-out tasks' loss,
//! and a checkpoint (weights and optimizer state) after every epoch from
//! which a run resumes exactly where it stopped.

use std::{collections::HashMap, path::Path, time::Instant};

use candle_core::{Device, Tensor, Var};
use candle_nn::{Optimizer as _, ParamsAdamW};
use headroom_model::{
    FEATURE_LAYOUT, ModelSpec, ResourceSpec, RowInput, SeriesContext, TimeEncoding,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    dataset::{Dataset, Split},
    network::{AdamW, Layer, Mlp, pinball_loss},
};

/// How to train.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainOptions {
    /// Most passes over the training tasks.
    #[arg(long, env = "HEADROOM_TRAIN_EPOCHS", default_value_t = 60)]
    pub epochs: usize,
    /// Samples per minibatch.
    #[arg(long, env = "HEADROOM_TRAIN_BATCH_SIZE", default_value_t = 512)]
    pub batch_size: usize,
    /// Units per hidden layer.
    #[arg(long, env = "HEADROOM_TRAIN_HIDDEN", default_value_t = 64)]
    pub hidden: usize,
    /// Hidden layers.
    #[arg(long, env = "HEADROOM_TRAIN_LAYERS", default_value_t = 2)]
    pub layers: usize,
    /// AdamW learning rate.
    #[arg(long, env = "HEADROOM_TRAIN_LEARNING_RATE", default_value_t = 3e-3)]
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    #[arg(long, env = "HEADROOM_TRAIN_WEIGHT_DECAY", default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Stop after this many epochs without a better validation loss.
    #[arg(long, env = "HEADROOM_TRAIN_PATIENCE", default_value_t = 6)]
    pub patience: usize,
    /// Share of tasks held out for validation.
    #[arg(
        long,
        env = "HEADROOM_TRAIN_VALIDATION_FRACTION",
        default_value_t = 0.2
    )]
    pub validation_fraction: f64,
    /// Quantile levels to predict, ascending (comma-separated).
    #[arg(
        long,
        env = "HEADROOM_TRAIN_QUANTILES",
        value_delimiter = ',',
        default_value = "0.5,0.9,0.99"
    )]
    pub quantiles: Vec<f64>,
    /// Periods encoded as time features (repeatable), e.g. `1m`.
    #[arg(long = "period", env = "HEADROOM_TRAIN_PERIOD", value_parser = humantime::parse_duration)]
    pub periods: Vec<std::time::Duration>,
    /// Share of training rows whose service identity (its one-hot and its
    /// place in the mix) is hidden, so that the network also learns to
    /// predict from the usage context alone, as it must for a service it
    /// never saw. In [0, 1).
    #[arg(long, env = "HEADROOM_TRAIN_IDENTITY_DROPOUT", default_value_t = 0.2)]
    pub identity_dropout: f64,
    /// Seed of the initial weights, the split and the shuffles.
    #[arg(long, env = "HEADROOM_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,
}

impl Default for TrainOptions {
    /// The defaults written in the `#[arg]` attributes above.
    fn default() -> Self {
        headroom_options::clap_defaults().expect("every TrainOptions field has a default")
    }
}

impl TrainOptions {
    /// Refuses options out of range, naming the flag: called before any
    /// sample is read, and again by [`train`].
    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Options(m.to_string()));
        if !headroom_model::quantiles_are_valid(&self.quantiles) {
            return bad("--quantiles must be ascending levels in (0, 1)");
        }
        if self.epochs == 0 || self.batch_size == 0 || self.hidden == 0 {
            return bad("--epochs, --batch-size and --hidden must be at least 1");
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return bad("--validation-fraction must be in (0, 1)");
        }
        if !(0.0..1.0).contains(&self.identity_dropout) {
            return Err(Error::Options(format!(
                "--identity-dropout must be in [0, 1), got {}",
                self.identity_dropout
            )));
        }
        Ok(())
    }
}

/// Losses of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training pinball loss (scaled units).
    pub train: f64,
    /// Validation pinball loss (scaled units).
    pub validation: f64,
}

/// A trained network with what it needs to be exported.
#[derive(Debug)]
pub struct Trained {
    /// The network of the best epoch.
    pub net: Mlp,
    /// Its encoding (no metrics yet).
    pub spec: ModelSpec,
    /// Losses per epoch.
    pub history: Vec<EpochLoss>,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// The split used.
    pub split: Split,
    /// Steps taken in this run (not counting a resumed checkpoint's).
    pub steps: usize,
    /// Wall time of this run's training.
    pub seconds: f64,
}

/// The encoding learned from the training rows: vocabularies, per
/// resource the floor of its series' scales and the centre and spread of
/// `ln σ` over its training rows, the longest task as the time scale, and
/// each series' latest context.
pub fn fit_spec(data: &Dataset, split: &Split, opts: &TrainOptions, version: &str) -> ModelSpec {
    let floors: Vec<f64> = data
        .resources
        .iter()
        .map(|r| headroom_model::default_floor(r))
        .collect();
    // Sum, sum of squares, count, min and max of ln σ per resource.
    let mut moments =
        vec![(0.0_f64, 0.0_f64, 0usize, f64::INFINITY, f64::NEG_INFINITY); data.resources.len()];
    let mut longest = 1.0_f64;
    for &i in &split.train {
        let r = &data.rows[i];
        let res = r.resource as usize;
        let l = data.contexts[r.context as usize].scale(floors[res]).ln();
        let m = &mut moments[res];
        m.0 += l;
        m.1 += l * l;
        m.2 += 1;
        m.3 = m.3.min(l);
        m.4 = m.4.max(l);
        longest = longest.max(f64::from(r.seconds));
    }
    let resources = data
        .resources
        .iter()
        .zip(moments)
        .zip(&floors)
        .map(|((name, (sum, squares, n, min, max)), floor)| {
            let n = n.max(1) as f64;
            let centre = sum / n;
            let spread = (squares / n - centre * centre).max(0.0).sqrt().max(1.0);
            // A resource without training rows: every size encodes as 0.
            let (min, max) = if min <= max { (min, max) } else { (0.0, 0.0) };
            ResourceSpec {
                name: name.clone(),
                unit: headroom_proto::resource::unit(name)
                    .unwrap_or("")
                    .to_string(),
                floor: *floor,
                log_scale_centre: centre,
                log_scale_spread: spread,
                log_scale_min: min,
                log_scale_max: max,
            }
        })
        .collect();
    ModelSpec {
        version: version.to_string(),
        feature_layout: FEATURE_LAYOUT,
        services: data.services.clone(),
        resources,
        quantiles: opts.quantiles.clone(),
        time: {
            // Calendar features only for a span that shows the period.
            let span = match (data.from, data.to) {
                (Some(from), Some(to)) => (to - from).num_milliseconds() as f64 / 1e3,
                _ => 0.0,
            };
            let (time_of_day, time_of_week) = TimeEncoding::calendar_for_span(span);
            TimeEncoding {
                scale_seconds: longest,
                periods_seconds: opts.periods.iter().map(|p| p.as_secs_f64()).collect(),
                time_of_day,
                time_of_week,
            }
        },
        trained_from: data.from,
        trained_to: data.to,
        contexts: data.latest.clone(),
        metrics: Vec::new(),
        held_out_tasks: split.held_out.clone(),
    }
}

/// The context and scale σ of a row.
pub fn row_context<'a>(
    data: &'a Dataset,
    spec: &ModelSpec,
    row: usize,
) -> (&'a SeriesContext, f64) {
    let r = &data.rows[row];
    let c = &data.contexts[r.context as usize];
    (c, spec.series_scale(r.resource as usize, c))
}

/// Features and scaled targets (usage / σ) of some rows, row-major.
pub fn encode_rows(data: &Dataset, spec: &ModelSpec, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    encode_rows_hiding(data, spec, rows, || false)
}

/// [`encode_rows`], hiding the service's identity (one-hot and mix entry)
/// from the rows for which `hide` says so, as for a service never seen.
pub fn encode_rows_hiding(
    data: &Dataset,
    spec: &ModelSpec,
    rows: &[usize],
    mut hide: impl FnMut() -> bool,
) -> (Vec<f32>, Vec<f32>) {
    let w = spec.width();
    let s = spec.services.len();
    let mut x = vec![0.0; rows.len() * w];
    let mut y = Vec::with_capacity(rows.len());
    for (&i, out) in rows.iter().zip(x.chunks_exact_mut(w)) {
        let r = &data.rows[i];
        let task = &data.tasks[r.task as usize];
        let (context, scale) = row_context(data, spec, i);
        spec.encode_row(
            &RowInput {
                mix: &task.mix,
                service: Some(r.service as usize),
                resource: r.resource as usize,
                context,
                task_start: task.start,
                seconds: f64::from(r.seconds),
            },
            out,
        );
        if hide() {
            out[r.service as usize] = 0.0;
            out[s + r.service as usize] = 0.0;
        }
        y.push((f64::from(r.value) / scale) as f32);
    }
    (x, y)
}

/// Scaled predictions for some rows, `[rows, quantiles]` row-major.
pub fn predict_rows(
    net: &Mlp,
    data: &Dataset,
    spec: &ModelSpec,
    rows: &[usize],
) -> Result<Vec<f32>> {
    predict_rows_as(net, data, spec, rows, false)
}

/// [`predict_rows`], with every row's service identity hidden when
/// `unseen` (as if the model had never seen the service: its one-hot and
/// mix entry are 0, only its context describes it).
pub fn predict_rows_as(
    net: &Mlp,
    data: &Dataset,
    spec: &ModelSpec,
    rows: &[usize],
    unseen: bool,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows.len() * spec.quantiles.len());
    for chunk in rows.chunks(16_384) {
        let (x, _) = encode_rows_hiding(data, spec, chunk, || unseen);
        out.extend(net.predict(&x)?);
    }
    Ok(out)
}

fn loss_on(net: &Mlp, data: &Dataset, spec: &ModelSpec, rows: &[usize]) -> Result<f64> {
    let mut total = 0.0;
    for chunk in rows.chunks(16_384) {
        let (x, y) = encode_rows(data, spec, chunk);
        let n = chunk.len();
        let x = Tensor::from_vec(x, (n, spec.width()), &Device::Cpu)?;
        let y = Tensor::from_vec(y, n, &Device::Cpu)?;
        let l = pinball_loss(&net.forward(&x)?.detach(), &y, &spec.quantiles)?;
        total += f64::from(l.to_scalar::<f32>()?) * n as f64;
    }
    Ok(total / rows.len().max(1) as f64)
}

/// Mixed into the epoch's seed for the identity-hiding draws, so they are
/// independent of the shuffle's.
const HIDING_SEED: u64 = 0x1d_e5_71_7e;

/// What a checkpoint remembers besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    spec: ModelSpec,
    epochs_done: usize,
    steps: usize,
    best_epoch: usize,
    best_validation: f64,
    history: Vec<EpochLoss>,
    hidden: usize,
    layers: usize,
    seed: u64,
}

fn layer_tensors(prefix: &str, layers: &[Layer], out: &mut HashMap<String, Tensor>) {
    for (i, l) in layers.iter().enumerate() {
        out.insert(format!("{prefix}{i}.weight"), l.weight.as_tensor().clone());
        out.insert(format!("{prefix}{i}.bias"), l.bias.as_tensor().clone());
    }
}

fn load_layers(prefix: &str, n: usize, tensors: &HashMap<String, Tensor>) -> Result<Vec<Layer>> {
    let get = |name: String| {
        tensors
            .get(&name)
            .ok_or_else(|| Error::Checkpoint(format!("missing tensor {name}")))
            .and_then(|t| Ok(Var::from_tensor(t)?))
    };
    (0..n)
        .map(|i| {
            Ok(Layer {
                weight: get(format!("{prefix}{i}.weight"))?,
                bias: get(format!("{prefix}{i}.bias"))?,
            })
        })
        .collect()
}

fn save_checkpoint(
    path: &Path,
    state: &CheckpointState,
    net: &Mlp,
    best: &[Layer],
    opt: &AdamW,
) -> Result<()> {
    let mut tensors = HashMap::new();
    layer_tensors("layer", &net.layers, &mut tensors);
    layer_tensors("best", best, &mut tensors);
    for (i, (m, v)) in opt.first.iter().zip(&opt.second).enumerate() {
        tensors.insert(format!("adamw.m{i}"), m.as_tensor().clone());
        tensors.insert(format!("adamw.v{i}"), v.as_tensor().clone());
    }
    let json = serde_json::to_vec(state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let n = json.len();
    tensors.insert(
        "state.json".into(),
        Tensor::from_vec(json, n, &Device::Cpu)?,
    );
    crate::write_atomically(path, |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })
}

fn load_checkpoint(path: &Path) -> Result<(CheckpointState, HashMap<String, Tensor>)> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
    let json: Vec<u8> = tensors
        .get("state.json")
        .ok_or_else(|| Error::Checkpoint(format!("{} has no training state", path.display())))?
        .to_vec1()?;
    let state = serde_json::from_slice(&json).map_err(|e| Error::Checkpoint(e.to_string()))?;
    Ok((state, tensors))
}

/// Where to keep the checkpoint, and whether to resume from it.
#[derive(Debug, Clone, Default)]
pub struct Checkpointing<'a> {
    /// Written after every epoch.
    pub path: Option<&'a Path>,
    /// Start from the checkpoint at `path` if there is one.
    pub resume: bool,
}

/// Trains on `data`. `progress` draws a bar on a terminal.
pub fn train(
    data: &Dataset,
    opts: &TrainOptions,
    checkpoint: Checkpointing<'_>,
    version: &str,
    progress: bool,
) -> Result<Trained> {
    opts.check()?;
    if data.rows.is_empty() {
        return Err(Error::Data("no samples to train on".into()));
    }
    let split = data.split(opts.validation_fraction, opts.seed)?;
    let mut spec = fit_spec(data, &split, opts, version);
    let params = ParamsAdamW {
        lr: opts.learning_rate,
        weight_decay: opts.weight_decay,
        ..ParamsAdamW::default()
    };
    let depth = opts.layers + 1;
    let resumed = match checkpoint.path.filter(|p| checkpoint.resume && p.exists()) {
        Some(path) => Some(load_checkpoint(path)?),
        None => None,
    };
    let (net, mut opt, mut state, mut best) = match resumed {
        Some((state, tensors)) => {
            let same = state.spec.services == spec.services
                && state
                    .spec
                    .resources
                    .iter()
                    .map(|r| &r.name)
                    .eq(spec.resources.iter().map(|r| &r.name))
                && state.spec.quantiles == spec.quantiles
                && state.hidden == opts.hidden
                && state.layers == opts.layers;
            if !same {
                return Err(Error::Checkpoint(
                    "the checkpoint was trained with other services, resources, quantiles or layers; \
                     train from scratch without --resume"
                        .into(),
                ));
            }
            let net = Mlp::from_layers(
                load_layers("layer", depth, &tensors)?,
                opts.quantiles.clone(),
            )?;
            let best = load_layers("best", depth, &tensors)?;
            let mut opt = AdamW::new(net.vars(), params)?;
            for (i, (m, v)) in opt.first.iter().zip(&opt.second).enumerate() {
                let get = |k: String| {
                    tensors
                        .get(&k)
                        .cloned()
                        .ok_or_else(|| Error::Checkpoint(format!("missing tensor {k}")))
                };
                m.set(&get(format!("adamw.m{i}"))?)?;
                v.set(&get(format!("adamw.v{i}"))?)?;
            }
            opt.step = state.steps;
            // Keep the encoding the weights were trained with.
            spec.resources = state.spec.resources.clone();
            spec.time = state.spec.time.clone();
            (net, opt, state, best)
        }
        None => {
            let net = Mlp::new(
                spec.width(),
                opts.hidden,
                opts.layers,
                opts.quantiles.clone(),
                opts.seed,
            )?;
            let opt = AdamW::new(net.vars(), params)?;
            let best = copy_layers(&net.layers)?;
            let state = CheckpointState {
                spec: spec.clone(),
                epochs_done: 0,
                steps: 0,
                best_epoch: 0,
                best_validation: f64::INFINITY,
                history: Vec::new(),
                hidden: opts.hidden,
                layers: opts.layers,
                seed: opts.seed,
            };
            (net, opt, state, best)
        }
    };

    let steps_per_epoch = split.train.len().div_ceil(opts.batch_size);
    let remaining = opts.epochs.saturating_sub(state.epochs_done);
    let bar = if progress {
        indicatif::ProgressBar::new((remaining * steps_per_epoch) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed} {msg}")
            .expect("a constant template parses"),
    );
    let started = Instant::now();
    let mut steps = 0;
    let w = spec.width();
    let mut order = split.train.clone();
    for epoch in state.epochs_done + 1..=opts.epochs {
        if state.best_epoch > 0 && epoch - 1 - state.best_epoch >= opts.patience {
            break;
        }
        order.copy_from_slice(&split.train);
        order.shuffle(&mut StdRng::seed_from_u64(
            opts.seed.wrapping_add(epoch as u64),
        ));
        let mut total = 0.0;
        let mut hiding = StdRng::seed_from_u64(opts.seed.wrapping_add(epoch as u64) ^ HIDING_SEED);
        for batch in order.chunks(opts.batch_size) {
            let (x, y) = encode_rows_hiding(data, &spec, batch, || {
                hiding.random_bool(opts.identity_dropout)
            });
            let x = Tensor::from_vec(x, (batch.len(), w), &Device::Cpu)?;
            let y = Tensor::from_vec(y, batch.len(), &Device::Cpu)?;
            let loss = pinball_loss(&net.forward(&x)?, &y, &spec.quantiles)?;
            opt.backward_step(&loss)?;
            total += f64::from(loss.to_scalar::<f32>()?) * batch.len() as f64;
            steps += 1;
            bar.inc(1);
        }
        let train_loss = total / order.len() as f64;
        let validation = loss_on(&net, data, &spec, &split.validation)?;
        if !validation.is_finite() {
            return Err(Error::Data(format!(
                "validation loss became {validation} at epoch {epoch}; lower --learning-rate"
            )));
        }
        state.history.push(EpochLoss {
            epoch,
            train: train_loss,
            validation,
        });
        if validation < state.best_validation {
            state.best_validation = validation;
            state.best_epoch = epoch;
            best = copy_layers(&net.layers)?;
        }
        state.epochs_done = epoch;
        state.steps = opt.step;
        bar.set_message(format!(
            "epoch {epoch} train {train_loss:.4} validation {validation:.4}"
        ));
        tracing::debug!(epoch, train = train_loss, validation, "epoch done");
        if let Some(path) = checkpoint.path {
            save_checkpoint(path, &state, &net, &best, &opt)?;
        }
    }
    bar.finish_and_clear();
    Ok(Trained {
        net: Mlp::from_layers(best, opts.quantiles.clone())?,
        spec,
        history: state.history,
        best_epoch: state.best_epoch,
        split,
        steps,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn copy_layers(layers: &[Layer]) -> Result<Vec<Layer>> {
    layers
        .iter()
        .map(|l| {
            Ok(Layer {
                weight: Var::from_tensor(&l.weight.as_tensor().copy()?)?,
                bias: Var::from_tensor(&l.bias.as_tensor().copy()?)?,
            })
        })
        .collect()
}
