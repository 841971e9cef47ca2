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
//!   `alibaba-MACHINE-PLACED-WINDOW-N` (where the import placed the trace,
//!   the window, its index: `alibaba-m_1-20261120T000000Z-1h-1`), mix = the app units seen there in that window.
//! - cpu cores = `cpu_util_percent / 100 × cpu_request / 100` (a request of
//!   100 is one core); memory bytes = `mem_util_percent / 100 × mem_size ×
//!   --memory-unit` (the trace normalises `mem_size`; the unit, 1 GiB by
//!   default, is an assumption to state with any result). Utilisations
//!   outside [0, 100] are refused and counted (the trace uses such values,
//!   −1 and 101, as sentinels). Each container is its own instance
//!   (replica) of its app unit: what an app unit gets is what one of its
//!   containers needs, and rows need no summing, so the file streams.
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
//!   seconds: a timestamp above 10¹¹ (the year 5138 in seconds, 1973 in
//!   milliseconds) is read as milliseconds, otherwise as seconds;
//! - service = the VM (the file's stem); task = all imported VMs over one
//!   `--window` (1 day): id `bitbrains-PLACED-WINDOW-N` (e.g.
//!   `bitbrains-20261120T000000Z-1day-0`, so imports placed or cut
//!   differently never share a task);
//! - cpu cores = usage MHz ÷ (capacity MHz ÷ cores); memory and IO: KB and
//!   KB/s × 1024;
//! - provisioned: the cores and the memory capacity.
//!
//! Both shift the trace so that it starts at `--start` (default: so that it
//! ends now: a first pass reads only the timestamps), keeping it inside
//! the raw retention. Without `--start`, a trace imported before is
//! refused (placed at "now" again it would be stored twice, under new
//! tasks); the reason names the earlier placement's `--start`. Malformed rows are counted, and the first few
//! reported with their line, never silently skipped; an import where every
//! row is malformed is an error.
//!
//! **Memory is bounded whatever the file's size.** Files are parsed row by
//! row (the `csv` crate) on a blocking thread and the rows written through
//! the store's normal write path (`write_batch`: series, tasks, rollups) in
//! batches of [`BATCH_ROWS`] samples, at most two batches in flight. Only
//! the container table of the Alibaba meta file (one entry per container)
//! is held whole. Progress (rows, rows/s, malformed) shows on a terminal.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use chrono::{DateTime, Utc};
use headroom_proto::resource;
use headroom_store::{self as store, Batch, Lookups, PgPool, Row, TaskSeen};
use tokio::sync::mpsc;

use crate::{Error, Result};

/// Samples written per transaction.
pub const BATCH_ROWS: usize = 20_000;
/// Examples of malformed rows kept for the report.
const EXAMPLES: usize = 5;
/// Distinct (task, service, resource) keys whose provisioned value is
/// remembered; past this the memory is cleared (costing repeated writes,
/// which the store ignores, never memory).
const PROVISIONED_SEEN: usize = 100_000;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Data rows read.
    pub rows: u64,
    /// Rows refused as malformed (including the out-of-range ones).
    pub malformed: u64,
    /// Of the malformed rows, those with a utilisation outside [0, 100]
    /// (Alibaba's sentinels such as −1 and 101).
    pub out_of_range: u64,
    /// The first malformed rows, with file, line and reason.
    pub examples: Vec<String>,
    /// Samples stored.
    pub samples: u64,
    /// Samples that were already stored with the same value (the same
    /// import run again): not stored twice.
    pub duplicates: u64,
    /// Samples whose key was already stored with another value: the
    /// stored value is kept.
    pub conflicts: u64,
    /// Provisioned values stored.
    pub provisioned: u64,
    /// Tasks written.
    pub tasks: u64,
    /// Distinct services.
    pub services: u64,
    /// Seconds the import took.
    pub seconds: f64,
    /// The oldest and newest stored sample's time, µs since the epoch
    /// (`None` when nothing was stored).
    pub span_us: Option<(i64, i64)>,
}

impl ImportReport {
    fn bad(&mut self, file: &Path, line: u64, why: impl std::fmt::Display) {
        self.malformed += 1;
        if self.examples.len() < EXAMPLES {
            self.examples
                .push(format!("{}:{line}: {why}", file.display()));
        }
    }

    /// One paragraph for the operator: a summary line, then the first
    /// malformed rows.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} rows read in {:.1} s ({:.0} rows/s), {} malformed ({} utilisations outside [0, 100]); {} samples and {} provisioned values stored over {} and {}",
            self.rows,
            self.seconds,
            self.rows as f64 / self.seconds.max(1e-9),
            self.malformed,
            self.out_of_range,
            self.samples,
            self.provisioned,
            headroom_units::count(self.tasks, "task"),
            headroom_units::count(self.services, "service")
        );
        if self.duplicates > 0 || self.conflicts > 0 {
            s.push_str(&format!(
                "; {} samples were already stored with the same value (imported before) and {} under the same key with another value (the stored one kept)",
                self.duplicates, self.conflicts
            ));
        }
        for e in &self.examples {
            s.push_str(&format!("\n  malformed: {e}"));
        }
        s
    }

    /// A warning when the trace reaches back past `raw_retention` from
    /// `now`: the collector's next retention pass deletes those raw samples
    /// (the rollups keep them), so they are named now rather than found
    /// missing later. `None` when every sample is inside the retention.
    pub fn retention_warning(
        &self,
        raw_retention: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let (oldest_us, newest_us) = self.span_us?;
        let cutoff = now - chrono::Duration::from_std(raw_retention).ok()?;
        let oldest = DateTime::<Utc>::from_timestamp_micros(oldest_us)?;
        if oldest >= cutoff {
            return None;
        }
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let days = headroom_units::duration;
        let span = (newest_us - oldest_us) as f64 * 1e-6;
        let keep = if span > raw_retention.as_secs_f64() {
            format!(
                "the trace spans {}, longer than the raw retention, so no --start keeps it whole: raise the collector's --raw-retention above {} to keep every raw sample",
                days(span),
                days(span)
            )
        } else {
            format!(
                "import with --start at or after {} or raise --raw-retention to keep them",
                at(cutoff)
            )
        };
        Some(format!(
            "warning: the trace starts at {}, before the raw retention's cutoff {} ({} back): the collector's next retention pass deletes the raw samples before the cutoff (the hourly rollups keep them); {keep}",
            at(oldest),
            at(cutoff),
            days(raw_retention.as_secs_f64()),
        ))
    }

    /// Refuses an import that stored nothing because every usage row was
    /// bad (or there was none).
    fn check(self, usage_rows: u64, usage_malformed: u64) -> Result<Self> {
        if usage_rows > 0 && usage_malformed == usage_rows {
            return Err(Error::InvalidArgument(format!(
                "every one of the {usage_rows} usage rows is malformed, nothing imported; for example {}",
                self.examples.last().map_or("", String::as_str)
            )));
        }
        if usage_rows == 0 {
            return Err(Error::InvalidArgument(
                "no data rows in the given files, nothing imported".into(),
            ));
        }
        Ok(self)
    }
}

/// Rows ready for the store: samples with their tasks' facts, and
/// provisioned values.
#[derive(Debug, Default)]
struct Chunk {
    batch: Batch,
    provisioned: Vec<Row>,
}

/// Where the parsing thread puts rows: it fills a chunk and hands it to
/// the writer when full, remembering which provisioned values it has sent.
#[derive(Debug)]
struct Sink {
    chunk: Chunk,
    out: mpsc::Sender<Chunk>,
    provisioned_seen: HashMap<(String, String, &'static str), f64>,
    progress: Progress,
    /// Oldest and newest sample time handed over, µs.
    span_us: Option<(i64, i64)>,
}

impl Sink {
    fn new(out: mpsc::Sender<Chunk>, progress: Progress) -> Self {
        Self {
            chunk: Chunk::default(),
            out,
            provisioned_seen: HashMap::new(),
            progress,
            span_us: None,
        }
    }

    fn task(&mut self, id: &str, start_us: i64, end_us: i64, service: &str) {
        match self.chunk.batch.tasks.get_mut(id) {
            Some(t) if t.services.iter().any(|s| s == service) => {
                t.start_us = t.start_us.min(start_us);
                t.end_us = t.end_us.max(Some(end_us));
            }
            _ => self.chunk.batch.merge_task(TaskSeen {
                id: id.to_string(),
                start_us,
                end_us: Some(end_us),
                services: vec![service.to_string()],
            }),
        }
    }

    fn sample(
        &mut self,
        task: &str,
        service: &str,
        instance: &str,
        r: &'static str,
        ts_us: i64,
        value: f64,
    ) {
        self.span_us = Some(match self.span_us {
            Some((a, b)) => (a.min(ts_us), b.max(ts_us)),
            None => (ts_us, ts_us),
        });
        self.chunk.batch.rows.push(Row {
            task_id: task.to_string(),
            service: service.to_string(),
            instance: instance.to_string(),
            resource: r,
            value,
            ts_us,
        });
    }

    /// What the operators allocated, written when it changes (a step).
    fn provision(&mut self, task: &str, service: &str, r: &'static str, ts_us: i64, value: f64) {
        let key = (task.to_string(), service.to_string(), r);
        if self.provisioned_seen.get(&key) == Some(&value) {
            return;
        }
        if self.provisioned_seen.len() >= PROVISIONED_SEEN {
            self.provisioned_seen.clear();
        }
        self.provisioned_seen.insert(key, value);
        self.chunk.provisioned.push(Row {
            task_id: task.to_string(),
            service: service.to_string(),
            instance: crate::ingest::decode::DEFAULT_INSTANCE.to_string(),
            resource: r,
            value,
            ts_us,
        });
    }

    /// Hands the chunk to the writer when it is full (or `force`d).
    /// Errors when the writer has stopped (its error is the import's).
    fn flush(&mut self, force: bool) -> std::result::Result<(), ()> {
        let full = self.chunk.batch.rows.len() + self.chunk.provisioned.len() >= BATCH_ROWS;
        if !(full || force) || (self.chunk.batch.is_empty() && self.chunk.provisioned.is_empty()) {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.out.blocking_send(chunk).map_err(|_| ())
    }
}

/// Rows, rows/s and malformed rows: a bar on a terminal, nothing
/// otherwise (the summary line says it at the end).
#[derive(Debug, Clone)]
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(what: &str) -> Self {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} {prefix}: {human_pos} rows, {per_sec}, {msg} [{elapsed}]",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Self(Some(bar))
    }

    fn set(&self, rows: u64, malformed: u64) {
        if let Some(bar) = &self.0
            && rows.is_multiple_of(4096)
        {
            bar.set_position(rows);
            bar.set_message(format!("{malformed} malformed"));
        }
    }

    fn stage(&self, what: &str) {
        if let Some(bar) = &self.0 {
            bar.set_prefix(what.to_string());
            bar.set_position(0);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Writes what the parser sends, in order, through the store's write path.
/// What the writer stored.
#[derive(Default)]
struct Written {
    /// Samples newly stored.
    samples: u64,
    /// Samples already stored with the same value (an import run again).
    duplicates: u64,
    /// Samples whose key was stored with another value (kept).
    conflicts: u64,
    /// Provisioned values stored.
    provisioned: u64,
    /// The distinct tasks and services, as hashes (8 bytes each, whatever
    /// the names).
    tasks: HashSet<u64>,
    services: HashSet<u64>,
}

async fn write_all(pool: PgPool, mut chunks: mpsc::Receiver<Chunk>) -> Result<Written> {
    use std::hash::{BuildHasher as _, RandomState};
    store::migrate(&pool).await?;
    let lookups = Lookups::new();
    let mut w = Written::default();
    let hasher = RandomState::new();
    while let Some(chunk) = chunks.recv().await {
        for t in chunk.batch.tasks.values() {
            w.tasks.insert(hasher.hash_one(&t.id));
            for s in &t.services {
                w.services.insert(hasher.hash_one(s));
            }
        }
        let report = store::write_batch(&pool, &lookups, &chunk.batch, true).await?;
        w.samples += report.inserted;
        w.duplicates += report.duplicates;
        w.conflicts += report.conflicts.len() as u64;
        w.provisioned += store::write_provisioned(&pool, &lookups, &chunk.provisioned).await?;
    }
    Ok(w)
}

/// Runs `parse` on a blocking thread feeding a [`Sink`], and the writer
/// here; the report of both.
/// `parse` returns its report with the usage rows it read and how many of
/// them were malformed.
async fn pipeline<F>(pool: &PgPool, what: &str, parse: F) -> Result<ImportReport>
where
    F: FnOnce(&mut Sink) -> Result<(ImportReport, u64, u64)> + Send + 'static,
{
    let started = Instant::now();
    let (tx, rx) = mpsc::channel(2);
    let progress = Progress::new(what);
    let writer = tokio::spawn(write_all(pool.clone(), rx));
    let parser = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let mut sink = Sink::new(tx, progress);
            let report = parse(&mut sink);
            let _ = sink.flush(true);
            report.map(|(mut r, rows, malformed)| {
                r.span_us = sink.span_us;
                (r, rows, malformed)
            })
        })
    };
    let parsed = parser
        .await
        .map_err(|e| Error::InvalidArgument(format!("the import stopped: {e}")))?;
    let written = writer
        .await
        .map_err(|e| Error::InvalidArgument(format!("the import stopped: {e}")))?;
    progress.finish();
    // A writer's error (the database) explains a parser that stopped.
    let written = written?;
    let (mut report, usage_rows, usage_malformed) = parsed?;
    report.samples = written.samples;
    report.duplicates = written.duplicates;
    report.conflicts = written.conflicts;
    report.provisioned = written.provisioned;
    report.tasks = written.tasks.len() as u64;
    report.services = written.services.len() as u64;
    report.seconds = started.elapsed().as_secs_f64();
    report.check(usage_rows, usage_malformed)
}

/// A CSV reader over `path` that takes rows of any length (they are
/// checked here, with their line).
fn reader(path: &Path, delimiter: u8, headers: bool) -> Result<csv::Reader<std::fs::File>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot read {}: {e}", path.display())))?;
    Ok(csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(headers)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file))
}

/// Reads a row, or says why the file cannot be read further.
fn next_row(
    rows: &mut csv::Reader<std::fs::File>,
    record: &mut csv::StringRecord,
    path: &Path,
) -> Result<bool> {
    match rows.read_record(record) {
        Ok(more) => Ok(more),
        // A row that is not UTF-8 is one bad row, not a broken file.
        Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
            record.clear();
            record.push_field("\u{fffd}");
            Ok(true)
        }
        Err(e) => Err(Error::InvalidArgument(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn field(row: &csv::StringRecord, i: usize, name: &str) -> std::result::Result<f64, String> {
    let text = row.get(i).unwrap_or("");
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{name} is {text:?}, not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{name} is {text:?}"))
    }
}

/// A task's id: its source, where the import placed the trace (`origin_us`,
/// µs since the epoch), the window length and the window's index, e.g.
/// `bitbrains-20261120T000000Z-1day-3`. Importing the same files at the
/// same start and window again names the same tasks (their samples are
/// then duplicates, dropped); an import placed elsewhere or cut in other
/// windows makes tasks of its own, even where its windows fall on another
/// import's, so two traces never interleave in one task's series.
fn task_name(prefix: &str, origin_us: i64, window: f64, index: f64) -> String {
    let placed = DateTime::<Utc>::from_timestamp_micros(origin_us)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| origin_us.to_string());
    let window = humantime::format_duration(std::time::Duration::from_secs_f64(window))
        .to_string()
        .replace(' ', "");
    format!("{prefix}-{placed}-{window}-{index}")
}

/// Refuses to place a trace at "now" (no `--start`) over an earlier
/// import of it: tasks named `prefix…` that ran any of `services` (any
/// such task when `services` is empty). Placed anew, every sample would be
/// stored a second time under new tasks, silently doubling the history.
/// The reason names the earlier placement and the `--start` that imports
/// into it again (already stored samples are then counted as duplicates).
async fn refuse_second_copy(
    pool: &PgPool,
    start: Option<DateTime<Utc>>,
    prefix: &str,
    services: &[String],
) -> Result<()> {
    // A database without the schema yet holds no earlier import.
    if start.is_some() || !store::has_schema(pool).await? {
        return Ok(());
    }
    let earlier = store::placements(pool, prefix, services).await?;
    let Some((placed, tasks)) = earlier.first() else {
        return Ok(());
    };
    let start = chrono::NaiveDateTime::parse_from_str(placed, "%Y%m%dT%H%M%SZ")
        .map(|t| {
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|_| placed.clone());
    let more = if earlier.len() > 1 {
        format!(" (the newest of {} placements)", earlier.len())
    } else {
        String::new()
    };
    Err(Error::InvalidArgument(format!(
        "this trace was imported before: {tasks} task(s) {prefix}{placed}-… placed at {start}{more}; \
         without --start it would be placed to end now and every sample stored again under new tasks: \
         give --start {start} to import into that placement (samples already stored are skipped), \
         or another --start to keep a second copy"
    )))
}

/// The earliest time a sample may be placed at, as the collector's ingest
/// checks it: 2000-01-01T00:00:00Z, µs.
const EARLIEST_US: i64 = 946_684_800_000_000;

/// How far ahead of now a sample may be placed, as the collector's ingest
/// checks it: 5 minutes, µs.
const AHEAD_US: i64 = 300_000_000;

/// Refuses a placement of the trace (`first_us` to `last_us`) the
/// collector would refuse: before 2000, or ending more than 5 minutes
/// ahead of now; the reason names the time and the latest `--start` that
/// fits.
fn check_placement(first_us: i64, last_us: i64) -> Result<()> {
    let now_us = Utc::now().timestamp_micros();
    let at = |us: i64| {
        DateTime::<Utc>::from_timestamp_micros(us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| format!("{us} µs"))
    };
    if first_us < EARLIEST_US {
        return Err(Error::InvalidArgument(format!(
            "--start places the trace at {}, before 2000-01-01T00:00:00Z, which the collector refuses",
            at(first_us)
        )));
    }
    if last_us > now_us + AHEAD_US {
        return Err(Error::InvalidArgument(format!(
            "--start places the trace's end at {}, in the future (the collector refuses samples more than 5 minutes ahead): give --start at or before {}, or leave it out to end the trace now",
            at(last_us),
            at(now_us - (last_us - first_us))
        )));
    }
    Ok(())
}

/// Refuses a task window shorter than a second.
fn check_window(window: std::time::Duration) -> Result<f64> {
    let w = window.as_secs_f64();
    if w < 1.0 {
        return Err(Error::InvalidArgument(format!(
            "--window {} is shorter than a second",
            humantime::format_duration(window)
        )));
    }
    Ok(w)
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
    /// Where the trace's time 0 is placed (default: so that it ends now;
    /// refused when an earlier import of an Alibaba trace is stored).
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

/// Why a utilisation is refused: outside [0, 100].
const OUT_OF_RANGE: &str = "outside [0, 100]";

/// One usage row's figures, checked: seconds from the trace's start,
/// utilisations in percent, network when given.
#[derive(Debug, Clone, Copy)]
struct UsageRow {
    ts: f64,
    cpu: f64,
    mem: f64,
    net_in: Option<f64>,
    net_out: Option<f64>,
}

/// One usage row, checked.
fn alibaba_row(
    row: &csv::StringRecord,
    containers: &HashMap<String, Container>,
) -> std::result::Result<UsageRow, String> {
    if row.len() != 11 {
        return Err(format!("{} fields, expected 11", row.len()));
    }
    let id = &row[0];
    if !containers.contains_key(id) {
        return Err(format!("container {id:?} is not in the meta file"));
    }
    let ts = field(row, 2, "time_stamp")?;
    if ts < 0.0 {
        return Err(format!("time_stamp {ts} is negative"));
    }
    let cpu = field(row, 3, "cpu_util_percent")?;
    let mem = field(row, 4, "mem_util_percent")?;
    for (name, v) in [("cpu_util_percent", cpu), ("mem_util_percent", mem)] {
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("{name} {v} is {OUT_OF_RANGE}"));
        }
    }
    // Network columns are often empty in the public files.
    let opt = |i: usize, name: &str| {
        if row[i].is_empty() {
            Ok(None)
        } else {
            field(row, i, name).map(Some)
        }
    };
    Ok(UsageRow {
        ts,
        cpu,
        mem,
        net_in: opt(8, "net_in")?,
        net_out: opt(9, "net_out")?,
    })
}

/// Imports an Alibaba v2018 container trace (see the module doc).
pub async fn alibaba(pool: &PgPool, o: &AlibabaOptions) -> Result<ImportReport> {
    // Unreadable files are refused before the store is touched.
    reader(&o.meta, b',', false)?;
    reader(&o.usage, b',', false)?;
    // Its services are known only once read: any earlier Alibaba import.
    refuse_second_copy(pool, o.start, "alibaba-", &[]).await?;
    let o = o.clone();
    pipeline(pool, "alibaba", move |sink| {
        let mut report = ImportReport::default();
        let mut containers: HashMap<String, Container> = HashMap::new();
        let mut meta = reader(&o.meta, b',', false)?;
        let mut row = csv::StringRecord::new();
        let mut line = 0u64;
        sink.progress.stage("alibaba meta");
        while next_row(&mut meta, &mut row, &o.meta)? {
            line += 1;
            if row.iter().all(str::is_empty) {
                continue;
            }
            report.rows += 1;
            let parsed = (|| {
                if row.len() != 8 {
                    return Err(format!("{} fields, expected 8", row.len()));
                }
                if row[0].is_empty() || row[3].is_empty() {
                    return Err("no container_id or app_du".into());
                }
                let cpu = field(&row, 5, "cpu_request")?;
                let mem = field(&row, 7, "mem_size")?;
                if cpu <= 0.0 || mem <= 0.0 {
                    return Err(format!(
                        "cpu_request {cpu} and mem_size {mem} must be positive"
                    ));
                }
                Ok(Container {
                    machine: row[1].to_string(),
                    app: row[3].to_string(),
                    cpu_cores: cpu / 100.0,
                    mem_units: mem,
                })
            })();
            match parsed {
                // A container's later rows (status changes) restate its facts.
                Ok(c) => {
                    containers.insert(row[0].to_string(), c);
                }
                Err(why) => report.bad(&o.meta, line, format!("meta: {why}")),
            }
        }
        let window = check_window(o.window)?;
        // The trace's span, to place its end at now: timestamps only.
        if let Some(start) = o.start {
            check_placement(start.timestamp_micros(), start.timestamp_micros())?;
        }
        let origin_us = match o.start {
            Some(start) => start.timestamp_micros(),
            None => {
                sink.progress.stage("alibaba usage (time span)");
                let mut span = 0.0f64;
                let mut usage = reader(&o.usage, b',', false)?;
                let mut n = 0;
                while next_row(&mut usage, &mut row, &o.usage)? {
                    n += 1;
                    sink.progress.set(n, 0);
                    if let Some(ts) = row.get(2).and_then(|t| t.parse::<f64>().ok()) {
                        span = span.max(ts);
                    }
                }
                (Utc::now() - chrono::Duration::seconds(span as i64) - chrono::Duration::minutes(1))
                    .timestamp_micros()
            }
        };
        sink.progress.stage("alibaba usage");
        let latest_us = Utc::now().timestamp_micros() + AHEAD_US;
        let mut usage = reader(&o.usage, b',', false)?;
        let mut line = 0u64;
        let (mut rows, mut bad) = (0u64, 0u64);
        while next_row(&mut usage, &mut row, &o.usage)? {
            line += 1;
            if row.iter().all(str::is_empty) {
                continue;
            }
            rows += 1;
            sink.progress.set(rows, bad);
            let UsageRow {
                ts,
                cpu,
                mem,
                net_in,
                net_out,
            } = match alibaba_row(&row, &containers) {
                Ok(r) => r,
                Err(why) => {
                    if why.ends_with(OUT_OF_RANGE) {
                        report.out_of_range += 1;
                    }
                    bad += 1;
                    report.bad(&o.usage, line, why);
                    continue;
                }
            };
            let id = &row[0];
            let c = &containers[id];
            let w = (ts / window).floor();
            let ts_us = origin_us + (ts * 1e6) as i64;
            if ts_us > latest_us {
                bad += 1;
                report.bad(
                    &o.usage,
                    line,
                    "--start places this row in the future, which the collector refuses: give an earlier --start",
                );
                continue;
            }
            let task_start = origin_us + (w * window * 1e6) as i64;
            let task = task_name(&format!("alibaba-{}", c.machine), origin_us, window, w);
            sink.task(
                &task,
                task_start,
                task_start + (window * 1e6) as i64,
                &c.app,
            );
            sink.sample(
                &task,
                &c.app,
                id,
                resource::CPU,
                ts_us,
                cpu / 100.0 * c.cpu_cores,
            );
            sink.sample(
                &task,
                &c.app,
                id,
                resource::MEMORY,
                ts_us,
                mem / 100.0 * c.mem_units * o.memory_unit,
            );
            if let Some(v) = net_in {
                sink.sample(&task, &c.app, id, resource::NET_RX, ts_us, v);
            }
            if let Some(v) = net_out {
                sink.sample(&task, &c.app, id, resource::NET_TX, ts_us, v);
            }
            sink.provision(&task, &c.app, resource::CPU, ts_us, c.cpu_cores);
            sink.provision(
                &task,
                &c.app,
                resource::MEMORY,
                ts_us,
                c.mem_units * o.memory_unit,
            );
            if sink.flush(false).is_err() {
                break;
            }
        }
        report.rows += rows;
        Ok((report, rows, bad))
    })
    .await
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
    /// Where the trace's first sample is placed (default: so that it ends
    /// now; refused when these VMs were imported before, naming the earlier
    /// placement to give again).
    #[arg(long, env = "HEADROOM_IMPORT_START")]
    pub start: Option<DateTime<Utc>>,
}

/// Column names of a Bitbrains row, as the parser reports them: columns
/// 1..=3 and 5..=10 (4, CPU usage in %, is derived).
const BITBRAINS_COLUMNS: [(usize, &str); 9] = [
    (1, "CPU cores"),
    (2, "CPU capacity"),
    (3, "CPU usage"),
    (5, "memory capacity"),
    (6, "memory usage"),
    (7, "disk read"),
    (8, "disk write"),
    (9, "network received"),
    (10, "network transmitted"),
];

/// A timestamp as written, in seconds: the header says ms, the published
/// files hold seconds; a value above 10¹¹ can only be milliseconds.
fn bitbrains_seconds(ts: f64) -> f64 {
    if ts > 1e11 { ts / 1000.0 } else { ts }
}

/// One parsed row: timestamp (s), then cores, capacity MHz, usage MHz,
/// memory capacity KB, memory usage KB, disk read, disk write, net rx,
/// net tx (KB/s).
fn bitbrains_row(row: &csv::StringRecord) -> std::result::Result<(f64, [f64; 9]), String> {
    if row.len() != 11 {
        return Err(format!("{} fields, expected 11", row.len()));
    }
    let ts = bitbrains_seconds(field(row, 0, "timestamp")?);
    let mut v = [0.0; 9];
    for (k, (col, name)) in BITBRAINS_COLUMNS.iter().enumerate() {
        v[k] = field(row, *col, name)?;
        if v[k] < 0.0 {
            return Err(format!("{name} is negative"));
        }
    }
    if v[0] <= 0.0 || v[1] <= 0.0 {
        return Err("CPU cores and capacity must be positive".into());
    }
    Ok((ts, v))
}

/// A VM file with its header checked.
fn bitbrains_reader(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let mut r = reader(path, b';', true)?;
    let ok = r
        .headers()
        .is_ok_and(|h| h.len() == 11 && h.get(0).is_some_and(|c| c.contains("Timestamp")));
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "{}: the first line is not the GWA-T-12 header (11 `;`-separated columns starting with Timestamp)",
            path.display()
        )));
    }
    Ok(r)
}

/// Imports Bitbrains GWA-T-12 VM files (see the module doc).
pub async fn bitbrains(pool: &PgPool, o: &BitbrainsOptions) -> Result<ImportReport> {
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
    // The same file named twice is read once.
    let mut seen_files = std::collections::HashSet::new();
    files.retain(|f| seen_files.insert(f.clone()));
    let mut vms: Vec<(String, PathBuf)> = Vec::new();
    for f in files {
        let name = f
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| {
                // The trace's files are `1.csv`, `2.csv`…; a file already
                // called `vm-1.csv` is not named twice.
                if s.starts_with("vm-") {
                    s.to_string()
                } else {
                    format!("vm-{s}")
                }
            })
            .ok_or_else(|| Error::InvalidArgument(format!("{}: no file name", f.display())))?;
        // A file without the header is refused before the store is touched.
        bitbrains_reader(&f)?;
        // Two VMs under one name would be merged (their samples taken for
        // conflicting replays): refused, naming both files.
        if let Some((_, other)) = vms.iter().find(|(n, _)| *n == name) {
            return Err(Error::InvalidArgument(format!(
                "{} and {} would both be service {name}: import them separately (each with its own --start) or rename one",
                other.display(),
                f.display()
            )));
        }
        vms.push((name, f));
    }
    let names: Vec<String> = vms.iter().map(|(n, _)| n.clone()).collect();
    check_window(o.window)?;
    refuse_second_copy(pool, o.start, "bitbrains-", &names).await?;
    let o = o.clone();
    pipeline(pool, "bitbrains", move |sink| {
        let mut report = ImportReport::default();
        let mut row = csv::StringRecord::new();
        // First pass: the trace's first and last instant, timestamps only.
        sink.progress.stage("bitbrains (time span)");
        let (mut first, mut last) = (f64::MAX, f64::MIN);
        for (_, path) in &vms {
            let mut r = bitbrains_reader(path)?;
            while next_row(&mut r, &mut row, path)? {
                if let Some(ts) = row.get(0).and_then(|t| t.parse::<f64>().ok())
                    && ts.is_finite()
                {
                    let ts = bitbrains_seconds(ts);
                    first = first.min(ts);
                    last = last.max(ts);
                }
            }
        }
        if first > last {
            return Err(Error::InvalidArgument(
                "no usable rows in the given files".into(),
            ));
        }
        let start = o.start.unwrap_or_else(|| {
            Utc::now()
                - chrono::Duration::seconds((last - first) as i64)
                - chrono::Duration::minutes(1)
        });
        let shift = start.timestamp() as f64 - first;
        check_placement(
            start.timestamp_micros(),
            start.timestamp_micros() + ((last - first) * 1e6) as i64,
        )?;
        let window = check_window(o.window)?;
        let instance = crate::ingest::decode::DEFAULT_INSTANCE;
        sink.progress.stage("bitbrains");
        'files: for (vm, path) in &vms {
            let mut r = bitbrains_reader(path)?;
            // Line 1 is the header.
            let mut line = 1u64;
            while next_row(&mut r, &mut row, path)? {
                line += 1;
                if row.iter().all(str::is_empty) {
                    continue;
                }
                report.rows += 1;
                sink.progress.set(report.rows, report.malformed);
                let (ts, v) = match bitbrains_row(&row) {
                    Ok(parsed) => parsed,
                    Err(why) => {
                        report.bad(path, line, why);
                        continue;
                    }
                };
                let t = ts + shift;
                let w = ((ts - first) / window).floor();
                let task_start = ((start.timestamp() as f64 + w * window) * 1e6) as i64;
                let task = task_name("bitbrains", start.timestamp_micros(), window, w);
                let ts_us = (t * 1e6) as i64;
                sink.task(&task, task_start, task_start + (window * 1e6) as i64, vm);
                let [cores, cap_mhz, use_mhz, mem_cap, mem_use, rd, wr, rx, tx] = v;
                for (res, value) in [
                    (resource::CPU, use_mhz / (cap_mhz / cores)),
                    (resource::MEMORY, mem_use * 1024.0),
                    (resource::DISK_READ, rd * 1024.0),
                    (resource::DISK_WRITE, wr * 1024.0),
                    (resource::NET_RX, rx * 1024.0),
                    (resource::NET_TX, tx * 1024.0),
                ] {
                    sink.sample(&task, vm, instance, res, ts_us, value);
                }
                sink.provision(&task, vm, resource::CPU, ts_us, cores);
                sink.provision(&task, vm, resource::MEMORY, ts_us, mem_cap * 1024.0);
                if sink.flush(false).is_err() {
                    break 'files;
                }
            }
        }
        let (rows, bad) = (report.rows, report.malformed);
        Ok((report, rows, bad))
    })
    .await
}
