//! `headroom-simulator`, the workload simulator: tasks made of services with
//! realistic usage profiles, deterministic from a seed. It is the ground
//! truth for tests, the demo and the benchmarks, and writes through the
//! store's own write path.
//!
//! Each service draws, from the seed, one profile per resource:
//! - **cpu** and the four **IO** rates: a base level, a warm-up ramp from 20 %
//!   of it (`1 − 0.8·e^(−t/ramp)`), phases (from given seconds into the task
//!   the level changes: a busy middle, a quieter tail), and periodic spikes
//!   (every `period` seconds for `width` seconds, `height` × base on top);
//! - **memory**: grows from a floor towards a plateau (`1 − e^(−t/growth)`)
//!   and stays there;
//! - **interference**: one or two other services that, when they run in the
//!   same task, multiply its cpu and IO by a factor of 1.4–2.2 (memory by
//!   half that excess);
//! - **noise**: each task has its own intensity (log-normal, σ = 0.1) and
//!   each sample its own (σ = 0.1 for cpu, 0.03 for memory, 0.25 for IO).

use std::{io::Write, path::Path};

use chrono::{DateTime, Duration, Utc};
use headroom_proto::resource;
use headroom_store::{self as store, Batch, Lookups, PgPool, Row as StoreRow, TaskSeen};
use rand::{Rng, SeedableRng as _, rngs::StdRng, seq::index};
use rand_distr::{Distribution as _, StandardNormal};
use serde::Serialize;

/// What can go wrong while simulating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options that contradict each other or make no sense.
    #[error("{0}")]
    Options(String),
    /// A file could not be written.
    #[error("{0}")]
    Io(String),
    /// The store refused the workload.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Result with the simulator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The instance every simulated sample is stored under: one replica per
/// service.
pub const SIMULATED_INSTANCE: &str = "sim";

/// Names given to simulated services, in order; more get a numeric suffix.
const NAMES: [&str; 12] = [
    "gateway",
    "auth",
    "catalog",
    "cart",
    "checkout",
    "search",
    "recommend",
    "payments",
    "inventory",
    "shipping",
    "email",
    "ledger",
];

/// What to simulate.
#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Seed: the same seed gives the same services, tasks and samples.
    #[arg(long, env = "HEADROOM_SIM_SEED", default_value_t = 7)]
    pub seed: u64,
    /// Number of distinct services.
    #[arg(long, env = "HEADROOM_SIM_SERVICES", default_value_t = 8)]
    pub services: usize,
    /// Number of tasks.
    #[arg(long, env = "HEADROOM_SIM_TASKS", default_value_t = 200)]
    pub tasks: usize,
    /// Fewest services in a task.
    #[arg(long, env = "HEADROOM_SIM_MIN_TASK_SERVICES", default_value_t = 2)]
    pub min_task_services: usize,
    /// Most services in a task.
    #[arg(long, env = "HEADROOM_SIM_MAX_TASK_SERVICES", default_value_t = 5)]
    pub max_task_services: usize,
    /// Shortest task.
    #[arg(long, env = "HEADROOM_SIM_MIN_DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub min_duration: std::time::Duration,
    /// Longest task.
    #[arg(long, env = "HEADROOM_SIM_MAX_DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_duration: std::time::Duration,
    /// Time between two samples of a service.
    #[arg(long, env = "HEADROOM_SIM_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Time between the starts of two consecutive tasks.
    #[arg(long, env = "HEADROOM_SIM_SPACING", default_value = "10m", value_parser = humantime::parse_duration)]
    pub spacing: std::time::Duration,
    /// Start of the first task, RFC 3339 (default: early enough for the last
    /// task to end now).
    #[arg(long, env = "HEADROOM_SIM_START")]
    pub start: Option<DateTime<Utc>>,
}

impl Default for SimOptions {
    /// The defaults written in the `#[arg]` attributes above.
    fn default() -> Self {
        headroom_options::clap_defaults().expect("every SimOptions field has a default")
    }
}

/// A rate profile (cpu or an IO resource).
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Level after warm-up, in the resource's unit.
    pub base: f64,
    /// Warm-up time constant, seconds.
    pub ramp_seconds: f64,
    /// From these seconds into the task, the level is multiplied by this.
    pub phases: Vec<(f64, f64)>,
    /// Spikes: every `period` seconds for `width` seconds, `height` × base on top.
    pub spike: Option<Spike>,
    /// Per-sample log-normal noise.
    pub noise: f64,
}

/// Periodic spikes.
#[derive(Debug, Clone, Serialize)]
pub struct Spike {
    /// Seconds between spike starts.
    pub period: f64,
    /// Seconds a spike lasts.
    pub width: f64,
    /// Extra usage during a spike, in multiples of the base.
    pub height: f64,
}

/// A memory profile.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Bytes at start.
    pub floor: f64,
    /// Bytes it grows towards.
    pub plateau: f64,
    /// Growth time constant, seconds.
    pub growth_seconds: f64,
    /// Per-sample log-normal noise.
    pub noise: f64,
}

/// Another service whose presence in the task raises this one's usage.
#[derive(Debug, Clone, Serialize)]
pub struct Interference {
    /// The other service's name.
    pub with: String,
    /// Multiplier on cpu and IO while it runs in the same task.
    pub factor: f64,
}

/// One simulated service.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// Name.
    pub name: String,
    /// cpu, in cores.
    pub cpu: Load,
    /// memory.
    pub memory: Memory,
    /// disk_read, disk_write, net_rx, net_tx, in bytes per second.
    pub io: [Load; 4],
    /// Interference from other services.
    pub interference: Vec<Interference>,
}

/// One simulated task.
#[derive(Debug, Clone, Serialize)]
pub struct SimTask {
    /// Task id.
    pub id: String,
    /// Indices of its services.
    pub services: Vec<usize>,
    /// Start.
    pub start: DateTime<Utc>,
    /// Length, seconds.
    pub duration: f64,
    /// The task's own intensity multiplier.
    pub intensity: f64,
}

/// Services and tasks drawn from a seed.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// The services.
    pub services: Vec<Service>,
    /// The tasks.
    pub tasks: Vec<SimTask>,
    /// Seconds between samples.
    pub interval: f64,
    /// The seed.
    pub seed: u64,
}

/// One generated sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index into [`Workload::tasks`].
    pub task: usize,
    /// Index into [`Workload::services`].
    pub service: usize,
    /// Resource name.
    pub resource: &'static str,
    /// Seconds into the task.
    pub seconds: f64,
    /// Time.
    pub ts: DateTime<Utc>,
    /// Value in the resource's unit.
    pub value: f64,
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..hi.ln())).exp()
}

fn load(rng: &mut StdRng, lo: f64, hi: f64, noise: f64) -> Load {
    let busy_from = rng.random_range(120.0..480.0);
    let quiet_from = busy_from + rng.random_range(300.0..700.0);
    Load {
        base: log_uniform(rng, lo, hi),
        ramp_seconds: rng.random_range(20.0..120.0),
        phases: vec![
            (busy_from, rng.random_range(1.3..1.8)),
            (quiet_from, rng.random_range(0.6..0.9)),
        ],
        spike: rng.random_bool(0.6).then(|| Spike {
            period: rng.random_range(6.0..20.0_f64).round() * 10.0,
            width: rng.random_range(1.0..3.0_f64).round() * 10.0,
            height: rng.random_range(1.0..2.5),
        }),
        noise,
    }
}

impl Load {
    /// Expected level at `t` seconds, before interference, task intensity and noise.
    pub fn at(&self, t: f64) -> f64 {
        let ramp = 1.0 - 0.8 * (-t / self.ramp_seconds).exp();
        let phase = self
            .phases
            .iter()
            .filter(|(from, _)| t >= *from)
            .fold(1.0, |_, (_, level)| *level);
        let spike = self
            .spike
            .as_ref()
            .filter(|s| t % s.period < s.width)
            .map_or(0.0, |s| s.height);
        self.base * (ramp * phase + spike)
    }
}

impl Memory {
    /// Expected bytes at `t` seconds, before interference and noise.
    pub fn at(&self, t: f64) -> f64 {
        self.floor + (self.plateau - self.floor) * (1.0 - (-t / self.growth_seconds).exp())
    }
}

impl Workload {
    /// Draws services and tasks from `opts.seed`.
    pub fn new(opts: &SimOptions) -> Result<Self> {
        let bad = |m: String| Err(Error::Options(m));
        if opts.services < 2 {
            return bad("simulate at least 2 services".into());
        }
        if opts.tasks == 0 {
            return bad("simulate at least 1 task".into());
        }
        if opts.min_task_services == 0 || opts.min_task_services > opts.max_task_services {
            return bad(format!(
                "task sizes {}..{} are not a range of at least 1",
                opts.min_task_services, opts.max_task_services
            ));
        }
        if opts.interval.is_zero() || opts.min_duration > opts.max_duration {
            return bad(
                "the interval must be positive and min-duration at most max-duration".into(),
            );
        }
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mut services: Vec<Service> = (0..opts.services)
            .map(|i| {
                let name = match (NAMES.get(i % NAMES.len()), i / NAMES.len()) {
                    (Some(n), 0) => (*n).to_string(),
                    (Some(n), k) => format!("{n}-{k}"),
                    (None, _) => unreachable!("i % len is in range"),
                };
                let plateau = log_uniform(&mut rng, 3e8, 3e9);
                Service {
                    name,
                    cpu: load(&mut rng, 0.2, 2.0, 0.1),
                    memory: Memory {
                        floor: plateau * rng.random_range(0.1..0.4),
                        plateau,
                        growth_seconds: rng.random_range(60.0..600.0),
                        noise: 0.03,
                    },
                    io: [
                        load(&mut rng, 1e5, 5e6, 0.25),
                        load(&mut rng, 1e5, 2e6, 0.25),
                        load(&mut rng, 1e5, 1e7, 0.25),
                        load(&mut rng, 1e5, 1e7, 0.25),
                    ],
                    interference: Vec::new(),
                }
            })
            .collect();
        for i in 0..services.len() {
            let k = rng.random_range(1..=2).min(services.len() - 1);
            let others: Vec<usize> = (0..services.len()).filter(|j| *j != i).collect();
            for j in index::sample(&mut rng, others.len(), k) {
                let with = services[others[j]].name.clone();
                let factor = rng.random_range(1.4..2.2);
                services[i].interference.push(Interference { with, factor });
            }
        }
        let max_k = opts.max_task_services.min(services.len());
        let min_k = opts.min_task_services.min(max_k);
        let (lo, hi) = (
            opts.min_duration.as_secs_f64(),
            opts.max_duration.as_secs_f64(),
        );
        let spacing = opts.spacing.as_secs_f64();
        let start = opts.start.unwrap_or_else(|| {
            Utc::now() - secs(spacing * opts.tasks as f64 + hi) - Duration::minutes(1)
        });
        let tasks = (0..opts.tasks)
            .map(|i| {
                let k = rng.random_range(min_k..=max_k);
                let mut picked = index::sample(&mut rng, services.len(), k).into_vec();
                picked.sort_unstable();
                let z: f64 = StandardNormal.sample(&mut rng);
                SimTask {
                    id: format!("sim-{}-{i:05}", opts.seed),
                    services: picked,
                    start: start + secs(spacing * i as f64),
                    duration: if hi > lo {
                        rng.random_range(lo..=hi)
                    } else {
                        lo
                    },
                    intensity: (0.1 * z - 0.005).exp(),
                }
            })
            .collect();
        Ok(Self {
            services,
            tasks,
            interval: opts.interval.as_secs_f64(),
            seed: opts.seed,
        })
    }

    /// Multiplier on `service`'s cpu and IO from the others in `mix`.
    pub fn interference(&self, service: usize, mix: &[usize]) -> f64 {
        self.services[service]
            .interference
            .iter()
            .filter(|i| mix.iter().any(|m| self.services[*m].name == i.with))
            .map(|i| i.factor)
            .product()
    }

    /// Expected usage (no noise, intensity 1) of a service in a task mix.
    pub fn expected(&self, service: usize, mix: &[usize], resource_name: &str, t: f64) -> f64 {
        let s = &self.services[service];
        let f = self.interference(service, mix);
        match resource::ALL.iter().position(|r| *r == resource_name) {
            Some(0) => s.cpu.at(t) * f,
            Some(1) => s.memory.at(t) * (1.0 + (f - 1.0) / 2.0),
            Some(i) => s.io[i - 2].at(t) * f,
            None => 0.0,
        }
    }

    /// Calls `f` with every sample, task by task, in time order. The noise
    /// comes from a generator seeded per task, so a task's samples do not
    /// depend on how many tasks come before it.
    pub fn for_each_sample<E>(&self, f: impl FnMut(Sample) -> Result<(), E>) -> Result<(), E> {
        self.for_tasks(0..=self.tasks.len() - 1, f)
    }

    /// [`Self::for_each_sample`] for a range of tasks.
    pub fn for_tasks<E>(
        &self,
        range: std::ops::RangeInclusive<usize>,
        mut f: impl FnMut(Sample) -> Result<(), E>,
    ) -> Result<(), E> {
        for ti in range {
            let task = &self.tasks[ti];
            let mut rng = StdRng::seed_from_u64(
                self.seed ^ (ti as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let steps = (task.duration / self.interval).floor() as usize;
            for step in 0..=steps {
                let t = step as f64 * self.interval;
                let ts = task.start + secs(t);
                for &service in &task.services {
                    for (ri, resource) in resource::ALL.iter().enumerate() {
                        let sigma = match ri {
                            0 => self.services[service].cpu.noise,
                            1 => self.services[service].memory.noise,
                            i => self.services[service].io[i - 2].noise,
                        };
                        let z: f64 = StandardNormal.sample(&mut rng);
                        let noise = (sigma * z - sigma * sigma / 2.0).exp();
                        let value = self.expected(service, &task.services, resource, t)
                            * task.intensity
                            * noise;
                        f(Sample {
                            task: ti,
                            service,
                            resource,
                            seconds: t,
                            ts,
                            value,
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Names of the services, sorted (the order the model's vocabulary has).
    pub fn service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names
    }

    /// Every value of one series (`service`, `resource`) over all tasks, in
    /// the resource's unit, sorted ascending; empty for an unknown name.
    pub fn sorted_values(&self, service: &str, resource: &str) -> Vec<f64> {
        let Some(si) = self.services.iter().position(|s| s.name == service) else {
            return Vec::new();
        };
        let mut values = Vec::new();
        let _ = self.for_each_sample(|s| {
            if s.service == si && s.resource == resource {
                values.push(s.value);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        values.sort_by(f64::total_cmp);
        values
    }

    /// Writes every sample as CSV in the collector's dump format. Returns
    /// the number of samples.
    pub fn write_csv(&self, out: &mut dyn Write) -> Result<u64> {
        let io = |e: std::io::Error| Error::Io(format!("while writing CSV: {e}"));
        writeln!(out, "task_id,service,resource,value,ts,seconds_into_task").map_err(io)?;
        let mut n = 0;
        self.for_each_sample(|s| {
            n += 1;
            writeln!(
                out,
                "{},{},{},{},{},{}",
                self.tasks[s.task].id,
                self.services[s.service].name,
                s.resource,
                s.value,
                s.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                s.seconds
            )
            .map_err(io)
        })?;
        out.flush().map_err(io)?;
        Ok(n)
    }

    /// Writes every task and sample into the store, through the collector's
    /// own write path (so series and rollups stay consistent).
    /// Returns the number of samples newly stored.
    pub async fn write_postgres(&self, pool: &PgPool) -> Result<u64> {
        store::migrate(pool).await?;
        let lookups = Lookups::new();
        let mut stored = 0;
        for chunk in (0..self.tasks.len()).collect::<Vec<_>>().chunks(10) {
            let mut batch = Batch::default();
            for &ti in chunk {
                let task = &self.tasks[ti];
                let start_us = task.start.timestamp_micros();
                batch.merge_task(TaskSeen {
                    id: task.id.clone(),
                    start_us,
                    end_us: Some(start_us + (task.duration * 1e6) as i64),
                    services: task
                        .services
                        .iter()
                        .map(|s| self.services[*s].name.clone())
                        .collect(),
                });
            }
            let first = chunk[0];
            let last = chunk[chunk.len() - 1];
            self.for_tasks(first..=last, |s| {
                batch.rows.push(StoreRow {
                    task_id: self.tasks[s.task].id.clone(),
                    service: self.services[s.service].name.clone(),
                    instance: SIMULATED_INSTANCE.to_string(),
                    resource: s.resource,
                    value: s.value,
                    ts_us: s.ts.timestamp_micros(),
                });
                Ok::<(), Error>(())
            })?;
            stored += store::write_batch(pool, &lookups, &batch, true)
                .await?
                .inserted;
        }
        Ok(stored)
    }
}

fn secs(s: f64) -> Duration {
    Duration::microseconds((s * 1e6) as i64)
}

/// Writes a workload's CSV to a file.
pub fn write_csv_file(workload: &Workload, path: &Path) -> Result<u64> {
    let file = std::fs::File::create(path)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", path.display())))?;
    workload.write_csv(&mut std::io::BufWriter::new(file))
}
