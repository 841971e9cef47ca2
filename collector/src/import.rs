//! Importers of public per-entity traces into the collector's schema, so
//! the allocator can backtest on real usage. Each writes usage through the
//! collector's own write path (series and rollups stay right) and what the
//! trace's operators allocated into `provisioned`.
//!
//! **Alibaba cluster-trace-v2018** (`container_meta.csv`,
//! `container_usage.csv`, no headers):
//! - meta: `container_id, machine_id, time_stamp, app_du, status,
//!   cpu_request, cpu_limit, mem_size`; usage: `container_id, machine_id,
//!   time_stamp, cpu_util_percent, mem_util_percent, cpi, mem_gps, mpki,
//!   net_in, net_out, disk_io_percent`.
//! - service = `app_du` (the application's deployment unit); task = the
//!   services on one machine over one `--window` (1 h): id
//!   `alibaba-MACHINE-W`, mix = the app units seen there in that window.
//! - cpu cores = `cpu_util_percent / 100 × cpu_request / 100` (a request of
//!   100 is one core); memory bytes = `mem_util_percent / 100 × mem_size ×
//!   --memory-unit` (the trace normalises `mem_size`; the unit, 1 GiB by
//!   default, is an assumption to state with any result). Containers of one
//!   app unit on one machine are summed per timestamp.
//! - provisioned: `cpu_request / 100` cores, `mem_size × --memory-unit`.
//! - `time_stamp` counts seconds from the trace's start, placed at
//!   `--start`.
//!
//! **Bitbrains GWA-T-12** (one `;`-separated file per VM, header
//! `Timestamp [ms]; CPU cores; CPU capacity provisioned [MHZ]; CPU usage
//! [MHZ]; CPU usage [%]; Memory capacity provisioned [KB]; Memory usage
//! [KB]; Disk read throughput [KB/s]; Disk write throughput [KB/s]; Network
//! received throughput [KB/s]; Network transmitted throughput [KB/s]`):
//! - the header says milliseconds but the published files hold Unix
//!   seconds: a file whose median timestamp exceeds 10¹¹ is read as
//!   milliseconds, otherwise as seconds;
//! - service = the VM (the file's stem); task = all imported VMs over one
//!   `--window` (1 day): id `bitbrains-W`;
//! - cpu cores = usage MHz ÷ (capacity MHz ÷ cores); memory and IO: KB and
//!   KB/s × 1024;
//! - provisioned: the cores and the memory capacity.
//!
//! Both shift the trace so that it starts at `--start` (default: so that it
//! ends now), keeping it inside the raw retention. Malformed rows are
//! counted, and the first few reported with their line, never silently
//! skipped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::BufRead,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use headroom_proto::resource;
use headroom_store::{self as store, Batch, Lookups, PgPool, Row, TaskSeen};

use crate::{Error, Result};

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Data rows read.
    pub rows: u64,
    /// Rows refused as malformed.
    pub malformed: u64,
    /// The first malformed rows, with file, line and reason.
    pub examples: Vec<String>,
    /// Samples stored (after summing containers).
    pub samples: u64,
    /// Provisioned values stored.
    pub provisioned: u64,
    /// Tasks written.
    pub tasks: u64,
    /// Distinct services.
    pub services: u64,
}

impl ImportReport {
    fn bad(&mut self, file: &Path, line: usize, why: impl std::fmt::Display) {
        self.malformed += 1;
        if self.examples.len() < 5 {
            self.examples
                .push(format!("{}:{line}: {why}", file.display()));
        }
    }

    /// One paragraph for the operator.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} rows read, {} malformed; {} samples and {} provisioned values stored over {} tasks and {} services",
            self.rows, self.malformed, self.samples, self.provisioned, self.tasks, self.services
        );
        for e in &self.examples {
            s.push_str(&format!("\n  malformed: {e}"));
        }
        s
    }
}

/// Where imported series go before they are written: per task, its start,
/// end and mix; per (task, service, resource, ts) a summed value.
#[derive(Debug, Default)]
struct Gathered {
    tasks: BTreeMap<String, (i64, i64, BTreeSet<String>)>,
    usage: BTreeMap<(String, String, &'static str, i64), f64>,
    provisioned: BTreeMap<(String, String, &'static str, i64), f64>,
}

impl Gathered {
    fn task(&mut self, id: &str, start_us: i64, end_us: i64, service: &str) {
        let t = self
            .tasks
            .entry(id.to_string())
            .or_insert_with(|| (start_us, end_us, BTreeSet::new()));
        t.0 = t.0.min(start_us);
        t.1 = t.1.max(end_us);
        t.2.insert(service.to_string());
    }

    fn add(&mut self, task: &str, service: &str, r: &'static str, ts_us: i64, value: f64) {
        *self
            .usage
            .entry((task.to_string(), service.to_string(), r, ts_us))
            .or_default() += value;
    }

    fn provision(&mut self, task: &str, service: &str, r: &'static str, ts_us: i64, value: f64) {
        *self
            .provisioned
            .entry((task.to_string(), service.to_string(), r, ts_us))
            .or_default() += value;
    }

    /// Writes everything, 20 tasks per transaction.
    async fn write(self, pool: &PgPool, report: &mut ImportReport) -> Result<()> {
        store::migrate(pool).await?;
        let lookups = Lookups::new();
        let services: BTreeSet<&String> = self.tasks.values().flat_map(|t| t.2.iter()).collect();
        report.services = services.len() as u64;
        report.tasks = self.tasks.len() as u64;
        let ids: Vec<&String> = self.tasks.keys().collect();
        for chunk in ids.chunks(20) {
            let (first, last) = (chunk[0].clone(), chunk[chunk.len() - 1].clone());
            let in_chunk = |k: &(String, String, &'static str, i64)| k.0 >= first && k.0 <= last;
            let mut batch = Batch::default();
            for id in chunk {
                let (start, end, mix) = &self.tasks[*id];
                batch.merge_task(TaskSeen {
                    id: (*id).clone(),
                    start_us: *start,
                    end_us: Some(*end),
                    services: mix.iter().cloned().collect(),
                });
            }
            let rows = |m: &BTreeMap<(String, String, &'static str, i64), f64>| -> Vec<Row> {
                m.range((first.clone(), String::new(), "", i64::MIN)..)
                    .take_while(|(k, _)| in_chunk(k))
                    .map(|((task, service, r, ts), v)| Row {
                        task_id: task.clone(),
                        service: service.clone(),
                        // One instance per imported unit: an Alibaba app
                        // unit's containers on a machine are summed, a
                        // Bitbrains VM is one machine.
                        instance: crate::ingest::decode::DEFAULT_INSTANCE.to_string(),
                        resource: r,
                        value: *v,
                        ts_us: *ts,
                    })
                    .collect()
            };
            batch.rows = rows(&self.usage);
            report.samples += store::write_batch(pool, &lookups, &batch, true)
                .await?
                .inserted;
            report.provisioned +=
                store::write_provisioned(pool, &lookups, &rows(&self.provisioned)).await?;
        }
        Ok(())
    }
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))
}

fn field(parts: &[&str], i: usize, name: &str) -> std::result::Result<f64, String> {
    let text = parts.get(i).map(|s| s.trim()).unwrap_or("");
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{name} is {text:?}, not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{name} is {text:?}"))
    }
}

/// Options of the Alibaba importer.
#[derive(Debug, Clone, clap::Args)]
pub struct AlibabaOptions {
    /// container_meta.csv.
    #[arg(long, env = "HEADROOM_IMPORT_META")]
    pub meta: PathBuf,
    /// container_usage.csv.
    #[arg(long, env = "HEADROOM_IMPORT_USAGE")]
    pub usage: PathBuf,
    /// A task: the services on one machine over this long.
    #[arg(long, env = "HEADROOM_IMPORT_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    /// Bytes per unit of the trace's normalised `mem_size`.
    #[arg(long, env = "HEADROOM_IMPORT_MEMORY_UNIT", default_value_t = 1024.0 * 1024.0 * 1024.0)]
    pub memory_unit: f64,
    /// Where the trace's time 0 is placed (default: so that it ends now).
    #[arg(long, env = "HEADROOM_IMPORT_START")]
    pub start: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct Container {
    machine: String,
    app: String,
    cpu_cores: f64,
    mem_units: f64,
}

/// Imports an Alibaba v2018 container trace (see the module doc).
pub async fn alibaba(pool: &PgPool, o: &AlibabaOptions) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut containers: HashMap<String, Container> = HashMap::new();
    for (n, line) in open(&o.meta)?.lines().enumerate() {
        let line =
            line.map_err(|e| Error::InvalidArgument(format!("{}: {e}", o.meta.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        report.rows += 1;
        let p: Vec<&str> = line.split(',').collect();
        let parsed = (|| {
            if p.len() != 8 {
                return Err(format!("{} fields, expected 8", p.len()));
            }
            if p[0].trim().is_empty() || p[3].trim().is_empty() {
                return Err("no container_id or app_du".into());
            }
            let cpu = field(&p, 5, "cpu_request")?;
            let mem = field(&p, 7, "mem_size")?;
            if cpu <= 0.0 || mem <= 0.0 {
                return Err(format!(
                    "cpu_request {cpu} and mem_size {mem} must be positive"
                ));
            }
            Ok(Container {
                machine: p[1].trim().to_string(),
                app: p[3].trim().to_string(),
                cpu_cores: cpu / 100.0,
                mem_units: mem,
            })
        })();
        match parsed {
            // A container's later rows (status changes) restate its facts.
            Ok(c) => {
                containers.insert(p[0].trim().to_string(), c);
            }
            Err(why) => report.bad(&o.meta, n + 1, why),
        }
    }
    struct Sample {
        ts: f64,
        container: String,
        cpu: f64,
        mem: f64,
        net_in: Option<f64>,
        net_out: Option<f64>,
    }
    let mut samples = Vec::new();
    for (n, line) in open(&o.usage)?.lines().enumerate() {
        let line =
            line.map_err(|e| Error::InvalidArgument(format!("{}: {e}", o.usage.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        report.rows += 1;
        let p: Vec<&str> = line.split(',').collect();
        let parsed = (|| {
            if p.len() != 11 {
                return Err(format!("{} fields, expected 11", p.len()));
            }
            let id = p[0].trim();
            if !containers.contains_key(id) {
                return Err(format!("container {id:?} is not in the meta file"));
            }
            let ts = field(&p, 2, "time_stamp")?;
            let cpu = field(&p, 3, "cpu_util_percent")?;
            let mem = field(&p, 4, "mem_util_percent")?;
            if ts < 0.0 || cpu < 0.0 || !(0.0..=100.0).contains(&mem) {
                return Err(format!(
                    "time_stamp {ts}, cpu_util_percent {cpu}, mem_util_percent {mem} out of range"
                ));
            }
            // Network columns are often empty in the public files.
            let opt = |i: usize, name: &str| {
                if p[i].trim().is_empty() {
                    Ok(None)
                } else {
                    field(&p, i, name).map(Some)
                }
            };
            Ok(Sample {
                ts,
                container: id.to_string(),
                cpu,
                mem,
                net_in: opt(8, "net_in")?,
                net_out: opt(9, "net_out")?,
            })
        })();
        match parsed {
            Ok(s) => samples.push(s),
            Err(why) => report.bad(&o.usage, n + 1, why),
        }
    }
    let span = samples.iter().map(|s| s.ts).fold(0.0, f64::max);
    let start = o.start.unwrap_or_else(|| {
        Utc::now() - chrono::Duration::seconds(span as i64) - chrono::Duration::minutes(1)
    });
    let origin_us = start.timestamp_micros();
    let window = o.window.as_secs_f64().max(1.0);
    let mut g = Gathered::default();
    for s in &samples {
        let c = &containers[&s.container];
        let w = (s.ts / window).floor();
        let task = format!("alibaba-{}-{w}", c.machine);
        let ts_us = origin_us + (s.ts * 1e6) as i64;
        let task_start = origin_us + (w * window * 1e6) as i64;
        g.task(
            &task,
            task_start,
            task_start + (window * 1e6) as i64,
            &c.app,
        );
        g.add(
            &task,
            &c.app,
            resource::CPU,
            ts_us,
            s.cpu / 100.0 * c.cpu_cores,
        );
        g.add(
            &task,
            &c.app,
            resource::MEMORY,
            ts_us,
            s.mem / 100.0 * c.mem_units * o.memory_unit,
        );
        if let Some(v) = s.net_in {
            g.add(&task, &c.app, resource::NET_RX, ts_us, v);
        }
        if let Some(v) = s.net_out {
            g.add(&task, &c.app, resource::NET_TX, ts_us, v);
        }
        g.provision(&task, &c.app, resource::CPU, ts_us, c.cpu_cores);
        g.provision(
            &task,
            &c.app,
            resource::MEMORY,
            ts_us,
            c.mem_units * o.memory_unit,
        );
    }
    g.write(pool, &mut report).await?;
    Ok(report)
}

/// Options of the Bitbrains importer.
#[derive(Debug, Clone, clap::Args)]
pub struct BitbrainsOptions {
    /// VM files (`N.csv`) or directories holding them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// A task: all imported VMs over this long.
    #[arg(long, env = "HEADROOM_IMPORT_WINDOW", default_value = "1d", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    /// Where the trace's first sample is placed (default: so that it ends now).
    #[arg(long, env = "HEADROOM_IMPORT_START")]
    pub start: Option<DateTime<Utc>>,
}

/// One parsed Bitbrains row: timestamp (as written), then cores, capacity
/// MHz, usage MHz, memory capacity KB, memory usage KB, disk read, disk
/// write, net rx, net tx (KB/s).
type VmRow = (f64, [f64; 9]);

/// Parses one VM file; malformed rows go to `report`.
fn bitbrains_file(path: &Path, report: &mut ImportReport) -> Result<Vec<VmRow>> {
    let mut out = Vec::new();
    let mut lines = open(path)?.lines().enumerate();
    match lines.next() {
        Some((_, Ok(h))) if h.contains("Timestamp") && h.split(';').count() == 11 => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{}: the first line is not the GWA-T-12 header (11 `;`-separated columns starting with Timestamp)",
                path.display()
            )));
        }
    }
    for (n, line) in lines {
        let line = line.map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        report.rows += 1;
        let p: Vec<&str> = line.split(';').collect();
        let parsed = (|| {
            if p.len() != 11 {
                return Err(format!("{} fields, expected 11", p.len()));
            }
            let ts = field(&p, 0, "timestamp")?;
            let mut v = [0.0; 9];
            let names = [
                "CPU cores",
                "CPU capacity",
                "CPU usage",
                "memory capacity",
                "memory usage",
                "disk read",
                "disk write",
                "network received",
                "network transmitted",
            ];
            // Columns 1..=3 and 5..=10 (4 is CPU usage in %, derived).
            for (k, col) in [1, 2, 3, 5, 6, 7, 8, 9, 10].iter().enumerate() {
                v[k] = field(&p, *col, names[k])?;
                if v[k] < 0.0 {
                    return Err(format!("{} is negative", names[k]));
                }
            }
            if v[0] <= 0.0 || v[1] <= 0.0 {
                return Err("CPU cores and capacity must be positive".into());
            }
            Ok((ts, v))
        })();
        match parsed {
            Ok(r) => out.push(r),
            Err(why) => report.bad(path, n + 1, why),
        }
    }
    // The header says ms; the published files hold seconds. Decide by value.
    let mut ts: Vec<f64> = out.iter().map(|r| r.0).collect();
    ts.sort_by(f64::total_cmp);
    if ts.get(ts.len() / 2).is_some_and(|m| *m > 1e11) {
        for r in &mut out {
            r.0 /= 1000.0;
        }
    }
    Ok(out)
}

/// Imports Bitbrains GWA-T-12 VM files (see the module doc).
pub async fn bitbrains(pool: &PgPool, o: &BitbrainsOptions) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut files = Vec::new();
    for p in &o.paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::InvalidArgument(format!("cannot list {}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "csv"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    let mut vms = Vec::new();
    for f in &files {
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| format!("vm-{s}"))
            .ok_or_else(|| Error::InvalidArgument(format!("{}: no file name", f.display())))?;
        vms.push((name, bitbrains_file(f, &mut report)?));
    }
    let first = vms
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.0))
        .fold(f64::MAX, f64::min);
    let last = vms
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.0))
        .fold(f64::MIN, f64::max);
    if first > last {
        return Err(Error::InvalidArgument(
            "no usable rows in the given files".into(),
        ));
    }
    let start = o.start.unwrap_or_else(|| {
        Utc::now() - chrono::Duration::seconds((last - first) as i64) - chrono::Duration::minutes(1)
    });
    let shift = start.timestamp() as f64 - first;
    let window = o.window.as_secs_f64().max(1.0);
    let mut g = Gathered::default();
    for (vm, rows) in &vms {
        for (ts, v) in rows {
            let t = ts + shift;
            let w = ((ts - first) / window).floor();
            let task = format!("bitbrains-{w}");
            let task_start = ((start.timestamp() as f64 + w * window) * 1e6) as i64;
            let ts_us = (t * 1e6) as i64;
            g.task(&task, task_start, task_start + (window * 1e6) as i64, vm);
            let [cores, cap_mhz, use_mhz, mem_cap, mem_use, rd, wr, rx, tx] = *v;
            g.add(&task, vm, resource::CPU, ts_us, use_mhz / (cap_mhz / cores));
            g.add(&task, vm, resource::MEMORY, ts_us, mem_use * 1024.0);
            g.add(&task, vm, resource::DISK_READ, ts_us, rd * 1024.0);
            g.add(&task, vm, resource::DISK_WRITE, ts_us, wr * 1024.0);
            g.add(&task, vm, resource::NET_RX, ts_us, rx * 1024.0);
            g.add(&task, vm, resource::NET_TX, ts_us, tx * 1024.0);
            g.provision(&task, vm, resource::CPU, ts_us, cores);
            g.provision(&task, vm, resource::MEMORY, ts_us, mem_cap * 1024.0);
        }
    }
    g.write(pool, &mut report).await?;
    Ok(report)
}
