//! Targets and the sampler: which processes (or which cgroup) make up a
//! service, and what they consumed since the previous tick.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use headroom_proto::resource;
use regex::Regex;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::{cgroup, counters::CounterSet, counters::per_second};

/// How the processes of a service are found.
#[derive(Debug, Clone)]
pub enum Selector {
    /// A process and its descendants.
    Pid(u32),
    /// Every process with this exact name, and their descendants.
    Name(String),
    /// Every process whose command line matches, and their descendants.
    Cmdline(Regex),
    /// A cgroup (a container): its path relative to the cgroup root, or a
    /// full path, on either hierarchy (see [`cgroup::Layout::resolve`]).
    Cgroup(PathBuf),
}

/// Why a target could not be sampled this tick.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The PID does not exist (any more).
    #[error("no process with pid {0}")]
    NoSuchPid(u32),
    /// Nothing matches the name or pattern right now.
    #[error("no process matches {0}")]
    NoMatch(String),
    /// The cgroup could not be read.
    #[error("{0}")]
    Cgroup(String),
}

/// What one tick measured for one target. Resources that cannot be
/// observed (network of a process, rates on the first tick) are absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// (resource, value) pairs in the resource's unit.
    pub values: Vec<(&'static str, f64)>,
    /// Processes that made up the target.
    pub processes: usize,
}

impl Measured {
    /// The value of one resource, if it was observed.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values
            .iter()
            .find(|(r, _)| *r == name)
            .map(|(_, v)| *v)
    }
}

/// Counters of one target between ticks.
#[derive(Debug, Default)]
struct TargetCounters {
    cpu: CounterSet<(u32, u64)>,
    read: CounterSet<(u32, u64)>,
    write: CounterSet<(u32, u64)>,
    /// Previous cgroup counter values, by resource name.
    cgroup: HashMap<&'static str, u64>,
    /// Previous OOM kill count of the cgroup.
    oom_kills: Option<u64>,
    primed: bool,
}

/// Samples many targets from one process table refresh per tick.
#[derive(Debug)]
pub struct Sampler {
    system: System,
    counters: HashMap<String, TargetCounters>,
    own_netns: Option<String>,
    /// Where cgroup paths lead: the host's hierarchy.
    layout: cgroup::Layout,
    /// Wall-clock seconds of the previous refresh, to tell processes born
    /// since then (all their counters count) from ones first seen now.
    previous_refresh_secs: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    /// A sampler with an empty process table, reading cgroups on the
    /// host's layout.
    pub fn new() -> Self {
        Self {
            system: System::new(),
            counters: HashMap::new(),
            own_netns: cgroup::own_netns(),
            layout: cgroup::Layout::host().clone(),
            previous_refresh_secs: u64::MAX,
        }
    }

    /// Refreshes the process table; call once per tick before `measure`.
    pub fn refresh(&mut self) {
        self.previous_refresh_secs = if self.previous_refresh_secs == u64::MAX {
            u64::MAX - 1
        } else {
            now_secs()
        };
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .with_disk_usage()
                .with_cmd(sysinfo::UpdateKind::OnlyIfNotSet)
                // Threads are summed into their process already; reading
                // every /proc/<pid>/task/* would cost far more than /proc.
                .without_tasks(),
        );
    }

    /// Forgets a target's counters (after Unwatch).
    pub fn forget(&mut self, key: &str) {
        self.counters.remove(key);
    }

    /// Measures one target over `elapsed_secs` since its previous tick;
    /// `key` names the target's counters between ticks (one per watched
    /// instance).
    pub fn measure(
        &mut self,
        key: &str,
        selector: &Selector,
        elapsed_secs: f64,
    ) -> Result<Measured, TargetError> {
        let counters = self.counters.entry(key.to_string()).or_default();
        let measured = match selector {
            Selector::Cgroup(path) => measure_cgroup(
                counters,
                &self.layout.resolve(path),
                self.own_netns.as_deref(),
                elapsed_secs,
            )
            .map_err(|e| match e {
                // Name the target as given when the layout led elsewhere.
                TargetError::Cgroup(m) if !m.contains(&*path.to_string_lossy()) => {
                    TargetError::Cgroup(format!("cgroup {}: {m}", path.display()))
                }
                e => e,
            }),
            other => {
                let pids = select(&self.system, other)?;
                Ok(measure_processes(
                    &self.system,
                    counters,
                    &pids,
                    self.previous_refresh_secs,
                    elapsed_secs,
                ))
            }
        };
        if measured.is_err() {
            // Whatever comes back later starts a fresh history.
            self.counters.remove(key);
        }
        measured
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The processes a selector names, with all their descendants.
fn select(system: &System, selector: &Selector) -> Result<Vec<Pid>, TargetError> {
    let roots: Vec<Pid> = match selector {
        Selector::Pid(pid) => {
            let pid = Pid::from_u32(*pid);
            if system.process(pid).is_none() {
                return Err(TargetError::NoSuchPid(pid.as_u32()));
            }
            vec![pid]
        }
        Selector::Name(name) => system
            .processes()
            .iter()
            .filter(|(_, p)| p.thread_kind().is_none() && p.name() == name.as_str())
            .map(|(pid, _)| *pid)
            .collect(),
        Selector::Cmdline(pattern) => system
            .processes()
            .iter()
            .filter(|(pid, p)| {
                p.thread_kind().is_none()
                    && pid.as_u32() != std::process::id()
                    && pattern.is_match(
                        &p.cmd()
                            .iter()
                            .map(|a| a.to_string_lossy())
                            .collect::<Vec<_>>()
                            .join(" "),
                    )
            })
            .map(|(pid, _)| *pid)
            .collect(),
        Selector::Cgroup(_) => unreachable!("cgroups are not process selectors"),
    };
    if roots.is_empty() {
        let what = match selector {
            Selector::Name(n) => format!("name {n:?}"),
            Selector::Cmdline(p) => format!("pattern {:?}", p.as_str()),
            _ => String::new(),
        };
        return Err(TargetError::NoMatch(what));
    }
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, p) in system.processes() {
        if p.thread_kind().is_some() {
            continue;
        }
        if let Some(parent) = p.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut seen: HashSet<Pid> = HashSet::new();
    let mut stack = roots;
    while let Some(pid) = stack.pop() {
        if seen.insert(pid)
            && let Some(kids) = children.get(&pid)
        {
            stack.extend(kids.iter().copied());
        }
    }
    Ok(seen.into_iter().collect())
}

fn measure_processes(
    system: &System,
    counters: &mut TargetCounters,
    pids: &[Pid],
    previous_refresh_secs: u64,
    elapsed_secs: f64,
) -> Measured {
    let (mut memory, mut cpu, mut read, mut write) = (0u64, Vec::new(), Vec::new(), Vec::new());
    for pid in pids {
        let Some(p) = system.process(*pid) else {
            continue;
        };
        let key = (pid.as_u32(), p.start_time());
        memory += p.memory();
        cpu.push((key, p.accumulated_cpu_time()));
        let disk = p.disk_usage();
        read.push((key, disk.total_read_bytes));
        write.push((key, disk.total_written_bytes));
    }
    let born_since = |k: &(u32, u64)| k.1 >= previous_refresh_secs;
    let cpu_ms = counters.cpu.delta(cpu, born_since);
    let read = counters.read.delta(read, born_since);
    let write = counters.write.delta(write, born_since);
    let mut values = vec![(resource::MEMORY, memory as f64)];
    if counters.primed {
        if let Some(v) = per_second(cpu_ms, elapsed_secs) {
            values.push((resource::CPU, v / 1000.0));
        }
        if let Some(v) = per_second(read, elapsed_secs) {
            values.push((resource::DISK_READ, v));
        }
        if let Some(v) = per_second(write, elapsed_secs) {
            values.push((resource::DISK_WRITE, v));
        }
    }
    counters.primed = true;
    Measured {
        values,
        processes: pids.len(),
    }
}

/// Memory as the working set; CPU, IO and network as rates; throttling as
/// seconds per second; OOM kills as a count per interval (a counter's
/// first reading has no interval: absent); limits as they stand.
fn measure_cgroup(
    counters: &mut TargetCounters,
    dirs: &cgroup::CgroupDirs,
    own_netns: Option<&str>,
    elapsed_secs: f64,
) -> Result<Measured, TargetError> {
    let r = cgroup::read(dirs, own_netns).map_err(|e| TargetError::Cgroup(e.to_string()))?;
    let mut values = Vec::new();
    if let Some(m) = r.memory_bytes {
        values.push((resource::MEMORY, m as f64));
    }
    if let Some(limit) = r.memory_limit_bytes {
        values.push((resource::MEMORY_LIMIT, limit as f64));
    }
    if let Some(cores) = r.cpu_limit_cores {
        values.push((resource::CPU_LIMIT, cores));
    }
    if let Some(kills) = r.oom_kills
        && let Some(previous) = counters.oom_kills.replace(kills)
    {
        let increase = if kills >= previous {
            kills - previous
        } else {
            kills
        };
        values.push((resource::OOM_KILLS, increase as f64));
    }
    // Nanosecond counters become seconds per second.
    let mut readings = vec![(resource::CPU, r.cpu_ns, 1e9)];
    for (name, v, scale) in [
        (resource::CPU_THROTTLED, r.throttled_ns, 1e9),
        (resource::DISK_READ, r.read_bytes, 1.0),
        (resource::DISK_WRITE, r.write_bytes, 1.0),
        (resource::NET_RX, r.net_rx_bytes, 1.0),
        (resource::NET_TX, r.net_tx_bytes, 1.0),
    ] {
        if let Some(v) = v {
            readings.push((name, v, scale));
        }
    }
    for (name, value, scale) in readings {
        let previous = counters.cgroup.insert(name, value);
        let Some(previous) = previous else { continue };
        // A counter that went backwards was reset: count from zero.
        let increase = if value >= previous {
            value - previous
        } else {
            value
        };
        if let Some(rate) = per_second(increase, elapsed_secs) {
            values.push((name, rate / scale));
        }
    }
    counters.primed = true;
    Ok(Measured {
        values,
        processes: r.pids.len(),
    })
}
