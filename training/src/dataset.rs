//! The training set: every sample with its task's mix, read from
//! PostgreSQL (the collector's schema) or from a CSV dump, and split into
//! training and validation **by task** so validation measures tasks the
//! model never saw.
//!
//! Each (task, series) gets the [`SeriesContext`] of that series' samples
//! in the [`CONTEXT_WINDOW_SECONDS`] before the task started, never later
//! ones, so no row sees its own future. A series' first task (nothing
//! before it in the window) takes its context from its own warm-up, the
//! first `min(1 h, ¼ of the series' span in the task)` (at least its first
//! sample), and only the rows after the warm-up are trained and scored on.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use headroom_model::{CONTEXT_WINDOW_SECONDS, SeriesContext};
use headroom_proto::resource;
use headroom_store as store;
use rand::{SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};

use crate::{Error, Result};

/// One sample, by vocabulary index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Index into [`Dataset::tasks`].
    pub task: u32,
    /// Index into [`Dataset::services`].
    pub service: u16,
    /// Index into [`Dataset::resources`].
    pub resource: u8,
    /// Seconds into the task.
    pub seconds: f32,
    /// Value in the resource's unit.
    pub value: f32,
    /// Index into [`Dataset::contexts`]: the series' context for this
    /// row's task.
    pub context: u32,
    /// The row is part of its series' warm-up (its own context was built
    /// from it), so it is neither trained nor scored on.
    pub warm_up: bool,
}

/// Longest warm-up of a series' first task, seconds.
pub const WARM_UP_SECONDS: f64 = 3600.0;

/// One task.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// Its services (the mix), as sorted indices into [`Dataset::services`].
    pub mix: Vec<usize>,
    /// Start, seconds since the Unix epoch (sample time − seconds into the
    /// task); 0 (1970-01-01) when the source had no sample times.
    pub start: f64,
}

/// Samples with their vocabularies.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Service names, sorted; rows refer to them by index.
    pub services: Vec<String>,
    /// Resource names in their canonical order; rows refer to them by index.
    pub resources: Vec<String>,
    /// Tasks; rows refer to them by index.
    pub tasks: Vec<Task>,
    /// The samples.
    pub rows: Vec<Row>,
    /// Series contexts the rows refer to ([`Row::context`]).
    pub contexts: Vec<SeriesContext>,
    /// Per service then resource, the context of the series' last
    /// [`CONTEXT_WINDOW_SECONDS`] of data (what the model stores for
    /// queries that bring none); `None` for a series without samples.
    pub latest: Vec<Vec<Option<SeriesContext>>>,
    /// Earliest sample time, where known.
    pub from: Option<DateTime<Utc>>,
    /// Latest sample time, where known.
    pub to: Option<DateTime<Utc>>,
}

/// Rows of the training and validation sets, as indices into
/// [`Dataset::rows`].
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Rows of the training tasks.
    pub train: Vec<usize>,
    /// Rows of the held-out tasks.
    pub validation: Vec<usize>,
    /// Ids of the held-out tasks.
    pub held_out: Vec<String>,
}

/// Collects samples by name and assigns indices.
#[derive(Debug, Default)]
pub struct Builder {
    services: HashMap<String, u16>,
    service_names: Vec<String>,
    tasks: HashMap<String, u32>,
    task_ids: Vec<String>,
    task_mix: Vec<Vec<u16>>,
    task_start: Vec<Option<f64>>,
    rows: Vec<Row>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn service(&mut self, name: &str) -> Result<u16> {
        if let Some(i) = self.services.get(name) {
            return Ok(*i);
        }
        let i = u16::try_from(self.service_names.len())
            .map_err(|_| Error::Data("more than 65,535 services".into()))?;
        self.services.insert(name.to_string(), i);
        self.service_names.push(name.to_string());
        Ok(i)
    }

    fn task(&mut self, id: &str) -> u32 {
        if let Some(i) = self.tasks.get(id) {
            return *i;
        }
        let i = self.task_ids.len() as u32;
        self.tasks.insert(id.to_string(), i);
        self.task_ids.push(id.to_string());
        self.task_mix.push(Vec::new());
        self.task_start.push(None);
        i
    }

    /// Declares the services of a task (its mix), as the tasks table says.
    pub fn task_services(&mut self, task_id: &str, services: &[String]) -> Result<()> {
        let t = self.task(task_id) as usize;
        for s in services {
            let s = self.service(s)?;
            if !self.task_mix[t].contains(&s) {
                self.task_mix[t].push(s);
            }
        }
        Ok(())
    }

    /// Adds one sample. Its service joins its task's mix. Pressure and
    /// limit samples (`oom_kills`, `cpu_throttled`, `memory_limit`,
    /// `cpu_limit`) are not usage to predict and are skipped.
    pub fn push(
        &mut self,
        task_id: &str,
        service: &str,
        resource_name: &str,
        seconds: f64,
        value: f64,
        ts: Option<DateTime<Utc>>,
    ) -> Result<()> {
        if resource::PRESSURE.contains(&resource_name) {
            return Ok(());
        }
        let resource = resource::ALL
            .iter()
            .position(|r| *r == resource_name)
            .ok_or_else(|| Error::Data(format!("unknown resource {resource_name:?}")))?
            as u8;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(Error::Data(format!(
                "seconds into task {task_id} is {seconds}; it must be at least 0"
            )));
        }
        if !value.is_finite() {
            return Err(Error::Data(format!("value {value} is not a number")));
        }
        let task = self.task(task_id);
        let svc = self.service(service)?;
        let mix = &mut self.task_mix[task as usize];
        if !mix.contains(&svc) {
            mix.push(svc);
        }
        if let Some(ts) = ts {
            self.from = Some(self.from.map_or(ts, |f| f.min(ts)));
            self.to = Some(self.to.map_or(ts, |t| t.max(ts)));
            let start = headroom_model::unix_seconds(ts) - seconds;
            let known = &mut self.task_start[task as usize];
            *known = Some(known.map_or(start, |s| s.min(start)));
        }
        self.rows.push(Row {
            task,
            service: svc,
            resource,
            seconds: seconds as f32,
            value: value as f32,
            context: 0,
            warm_up: false,
        });
        Ok(())
    }

    /// The dataset: services sorted by name, resources in canonical order,
    /// tasks without samples left out.
    pub fn finish(self) -> Dataset {
        let mut order: Vec<usize> = (0..self.service_names.len()).collect();
        order.sort_by(|a, b| self.service_names[*a].cmp(&self.service_names[*b]));
        let mut service_map = vec![0u16; order.len()];
        for (new, old) in order.iter().enumerate() {
            service_map[*old] = new as u16;
        }
        let mut used_resources = [false; resource::ALL.len()];
        let mut task_has_rows = vec![false; self.task_ids.len()];
        for r in &self.rows {
            used_resources[r.resource as usize] = true;
            task_has_rows[r.task as usize] = true;
        }
        let mut resource_map = [0u8; resource::ALL.len()];
        let mut resources = Vec::new();
        for (i, used) in used_resources.iter().enumerate() {
            if *used {
                resource_map[i] = resources.len() as u8;
                resources.push(resource::ALL[i].to_string());
            }
        }
        let mut task_map = vec![u32::MAX; self.task_ids.len()];
        let mut tasks = Vec::new();
        for (i, id) in self.task_ids.into_iter().enumerate() {
            if task_has_rows[i] {
                task_map[i] = tasks.len() as u32;
                let mut mix: Vec<usize> = self.task_mix[i]
                    .iter()
                    .map(|s| service_map[*s as usize] as usize)
                    .collect();
                mix.sort_unstable();
                tasks.push(Task {
                    id,
                    mix,
                    start: self.task_start[i].unwrap_or(0.0),
                });
            }
        }
        let mut rows: Vec<Row> = self
            .rows
            .into_iter()
            .map(|r| Row {
                task: task_map[r.task as usize],
                service: service_map[r.service as usize],
                resource: resource_map[r.resource as usize],
                ..r
            })
            .collect();
        let services: Vec<String> = order
            .into_iter()
            .map(|i| self.service_names[i].clone())
            .collect();
        let (contexts, latest) =
            attach_contexts(&tasks, &mut rows, services.len(), resources.len());
        Dataset {
            services,
            resources,
            tasks,
            rows,
            contexts,
            latest,
            from: self.from,
            to: self.to,
        }
    }
}

/// Gives every row its series' context for its task (see the module docs)
/// and returns the contexts with each series' latest one.
fn attach_contexts(
    tasks: &[Task],
    rows: &mut [Row],
    services: usize,
    resources: usize,
) -> (Vec<SeriesContext>, Vec<Vec<Option<SeriesContext>>>) {
    let time = |r: &Row| tasks[r.task as usize].start + f64::from(r.seconds);
    let mut by_series: Vec<Vec<u32>> = vec![Vec::new(); services * resources];
    for (i, r) in rows.iter().enumerate() {
        by_series[r.service as usize * resources + r.resource as usize].push(i as u32);
    }
    let mut contexts = Vec::new();
    let mut latest = vec![vec![None; resources]; services];
    let mut scratch: Vec<f64> = Vec::new();
    for (key, mut series) in by_series.into_iter().enumerate() {
        if series.is_empty() {
            continue;
        }
        series.sort_by(|a, b| time(&rows[*a as usize]).total_cmp(&time(&rows[*b as usize])));
        let times: Vec<f64> = series.iter().map(|i| time(&rows[*i as usize])).collect();
        let values: Vec<f64> = series
            .iter()
            .map(|i| f64::from(rows[*i as usize].value))
            .collect();
        let window = |from: f64, to: f64| {
            times.partition_point(|t| *t < from)..times.partition_point(|t| *t < to)
        };
        let end = times[times.len() - 1];
        let recent = times.partition_point(|t| *t < end - CONTEXT_WINDOW_SECONDS);
        scratch.clear();
        scratch.extend_from_slice(&values[recent..]);
        latest[key / resources][key % resources] = SeriesContext::of_mut(&mut scratch);

        // The series' rows grouped by task, each group in time order.
        let mut by_task: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for i in &series {
            by_task.entry(rows[*i as usize].task).or_default().push(*i);
        }
        for (task, members) in by_task {
            let start = tasks[task as usize].start;
            let before = window(start - CONTEXT_WINDOW_SECONDS, start);
            scratch.clear();
            scratch.extend_from_slice(&values[before]);
            let mut warm_up = 0;
            if scratch.is_empty() {
                let seconds = |i: &u32| f64::from(rows[*i as usize].seconds);
                let first = seconds(&members[0]);
                let last = seconds(&members[members.len() - 1]);
                let end = first + WARM_UP_SECONDS.min((last - first) / 4.0);
                warm_up = members
                    .iter()
                    .take_while(|i| seconds(i) < end)
                    .count()
                    .max(1);
                scratch.extend(
                    members[..warm_up]
                        .iter()
                        .map(|i| f64::from(rows[*i as usize].value)),
                );
            }
            let context =
                SeriesContext::of_mut(&mut scratch).expect("a task's series has a sample");
            let index = contexts.len() as u32;
            contexts.push(context);
            for (n, i) in members.iter().enumerate() {
                let row = &mut rows[*i as usize];
                row.context = index;
                row.warm_up = n < warm_up;
            }
        }
    }
    (contexts, latest)
}

/// Which stored samples to train on.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Inclusive start.
    pub start: Option<DateTime<Utc>>,
    /// Exclusive end.
    pub end: Option<DateTime<Utc>>,
}

impl Dataset {
    /// Reads a CSV dump (`headroom-collector admin dump`, or
    /// `headroom-train simulate --csv`): a header naming at least
    /// `task_id,service,resource,value,seconds_into_task`; `ts` is optional.
    pub fn from_csv(path: &Path) -> Result<Self> {
        let unreadable =
            |e: String| Error::Data(format!("cannot read CSV {}: {e}", path.display()));
        let mut reader = csv::Reader::from_path(path).map_err(|e| unreadable(e.to_string()))?;
        let headers = reader
            .headers()
            .map_err(|e| unreadable(e.to_string()))?
            .clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| unreadable(format!("no {name:?} column in the header")))
        };
        let (task, service, res, value, seconds) = (
            column("task_id")?,
            column("service")?,
            column("resource")?,
            column("value")?,
            column("seconds_into_task")?,
        );
        let ts = headers.iter().position(|h| h == "ts");
        let mut b = Builder::new();
        let mut record = csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(unreadable(e.to_string())),
            }
            let line = record.position().map_or(0, |p| p.line());
            let at = |e: String| unreadable(format!("line {line}: {e}"));
            let number = |i: usize, what: &str| {
                record[i]
                    .parse::<f64>()
                    .map_err(|_| at(format!("{what} {:?} is not a number", &record[i])))
            };
            let time = match ts {
                Some(i) if !record[i].is_empty() => Some(
                    DateTime::parse_from_rfc3339(&record[i])
                        .map_err(|e| at(format!("ts {:?}: {e}", &record[i])))?
                        .with_timezone(&Utc),
                ),
                _ => None,
            };
            b.push(
                &record[task],
                &record[service],
                &record[res],
                number(seconds, "seconds_into_task")?,
                number(value, "value")?,
                time,
            )
            .map_err(|e| at(e.to_string()))?;
        }
        Ok(b.finish())
    }

    /// Every sample of a simulated workload, as a training set.
    pub fn from_workload(workload: &headroom_simulator::Workload) -> Result<Self> {
        let mut b = Builder::new();
        for t in &workload.tasks {
            let names: Vec<String> = t
                .services
                .iter()
                .map(|s| workload.services[*s].name.clone())
                .collect();
            b.task_services(&t.id, &names)?;
        }
        workload.for_each_sample(|s| {
            b.push(
                &workload.tasks[s.task].id,
                &workload.services[s.service].name,
                s.resource,
                s.seconds,
                s.value,
                Some(s.ts),
            )
        })?;
        Ok(b.finish())
    }

    /// Reads the collector's store: raw samples, or per-minute rollups for
    /// windows that reach past the raw horizon.
    pub async fn from_postgres(pool: &store::PgPool, window: &Window) -> Result<Self> {
        if !store::has_schema(pool).await? {
            return Ok(Self::default());
        }
        let filter = store::resolve_filter(pool, &[], &[], &[], window.start, window.end).await?;
        let rollup = store::rollup::choose_for_export(pool, &filter).await?;
        let (services, resources) = store::names(pool).await?;
        let query = store::export_query(rollup);
        let mut b = Builder::new();
        let mut rows = store::export_rows(pool, &filter, &query);
        while let Some(r) = rows.try_next().await.map_err(store::Error::from)? {
            let seconds = (r.ts - r.start_ts).num_milliseconds() as f64 / 1000.0;
            if seconds < 0.0 {
                // A sample stamped before its task's start: clock skew
                // between hosts; it says nothing about the task's profile.
                continue;
            }
            b.push(
                &r.task_id,
                services.get(&r.service_id).map_or("", String::as_str),
                resources.get(&r.resource_id).map_or("", String::as_str),
                seconds,
                r.value,
                Some(r.ts),
            )?;
        }
        let ids: Vec<String> = b.task_ids.clone();
        for chunk in ids.chunks(1000) {
            for t in store::get_tasks(pool, chunk).await? {
                b.task_services(&t.id, &t.services)?;
            }
        }
        Ok(b.finish())
    }

    /// Splits rows by task: a seeded shuffle of the tasks, the first
    /// `fraction` of them held out (at least one, and at least one kept).
    /// Warm-up rows ([`Row::warm_up`]) are in neither part.
    pub fn split(&self, fraction: f64, seed: u64) -> Result<Split> {
        if self.tasks.len() < 2 {
            return Err(Error::Data(format!(
                "{} task(s) in the data; at least 2 are needed to hold one out for validation",
                self.tasks.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.tasks.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let n =
            ((self.tasks.len() as f64 * fraction).round() as usize).clamp(1, self.tasks.len() - 1);
        let mut held = vec![false; self.tasks.len()];
        for t in &order[..n] {
            held[*t] = true;
        }
        let mut split = Split {
            held_out: order[..n]
                .iter()
                .map(|t| self.tasks[*t].id.clone())
                .collect(),
            ..Split::default()
        };
        for (i, r) in self.rows.iter().enumerate() {
            if r.warm_up {
                continue;
            }
            if held[r.task as usize] {
                split.validation.push(i);
            } else {
                split.train.push(i);
            }
        }
        Ok(split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_are_sorted_and_rows_follow_them() {
        let mut b = Builder::new();
        b.push("t1", "web", "memory", 0.0, 5.0, None).unwrap();
        b.push("t1", "api", "cpu", 1.0, 0.5, None).unwrap();
        b.push("t2", "db", "cpu", 2.0, 1.5, None).unwrap();
        b.task_services("t2", &["web".into()]).unwrap();
        b.task_services("t3", &["cache".into()]).unwrap();
        let d = b.finish();
        assert_eq!(d.services, ["api", "cache", "db", "web"]);
        assert_eq!(d.resources, ["cpu", "memory"]);
        assert_eq!(d.tasks.len(), 2, "t3 has no samples");
        assert_eq!(d.tasks[0].mix, [0, 3]);
        assert_eq!(
            d.tasks[1].mix,
            [2, 3],
            "the declared mix joins the seen one"
        );
        assert_eq!(d.rows[0].service, 3);
        assert_eq!(d.rows[0].resource, 1);
        assert_eq!(d.rows[2].task, 1);
    }

    #[test]
    fn bad_samples_are_refused() {
        let mut b = Builder::new();
        assert!(b.push("t", "s", "gpu", 0.0, 1.0, None).is_err());
        assert!(b.push("t", "s", "cpu", -1.0, 1.0, None).is_err());
        assert!(b.push("t", "s", "cpu", 1.0, f64::NAN, None).is_err());
    }

    fn at(seconds: f64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_700_000_000 + seconds as i64, 0)
    }

    #[test]
    fn split_keeps_whole_tasks_apart_and_is_reproducible() {
        let mut b = Builder::new();
        for t in 0..20 {
            for s in 0..10 {
                let s = f64::from(s);
                b.push(
                    &format!("t{t}"),
                    "svc",
                    "cpu",
                    s,
                    1.0,
                    at(f64::from(t) * 100.0 + s),
                )
                .unwrap();
            }
        }
        let d = b.finish();
        let warm_up: Vec<usize> = (0..d.rows.len()).filter(|i| d.rows[*i].warm_up).collect();
        assert_eq!(warm_up, [0, 1, 2], "t0's first quarter is its warm-up");
        let a = d.split(0.25, 7).unwrap();
        assert_eq!(a.held_out.len(), 5);
        assert_eq!(a.validation.len() + a.train.len(), 197);
        let val_tasks: std::collections::HashSet<u32> =
            a.validation.iter().map(|i| d.rows[*i].task).collect();
        assert_eq!(val_tasks.len(), 5);
        assert!(
            a.train
                .iter()
                .all(|i| !val_tasks.contains(&d.rows[*i].task))
        );
        assert_eq!(d.split(0.25, 7).unwrap().held_out, a.held_out);
        assert_ne!(d.split(0.25, 8).unwrap().held_out, a.held_out);
        assert!(Dataset::default().split(0.2, 1).is_err());
    }

    #[test]
    fn a_context_sees_only_its_series_history_before_the_task() {
        let mut b = Builder::new();
        // Three day-long tasks a day apart, one sample an hour; the
        // value is the hour since the first start.
        for t in 0..3 {
            for h in 0..24 {
                let since = f64::from(t * 24 + h) * 3600.0;
                let v = f64::from(t * 24 + h);
                b.push(
                    &format!("d{t}"),
                    "vm",
                    "cpu",
                    f64::from(h) * 3600.0,
                    v,
                    at(since),
                )
                .unwrap();
                b.push(
                    &format!("d{t}"),
                    "vm",
                    "memory",
                    f64::from(h) * 3600.0,
                    1e9,
                    at(since),
                )
                .unwrap();
            }
        }
        let d = b.finish();
        assert_eq!(d.tasks[1].start - d.tasks[0].start, 86_400.0);
        let cpu = |t: u32, h: f32| {
            d.rows
                .iter()
                .find(|r| r.task == t && r.resource == 0 && r.seconds == h * 3600.0)
                .unwrap()
        };
        // The first day: its first hour (a quarter of 23 h is over 1 h)
        // is the warm-up; later rows use that hour's one sample.
        assert!(cpu(0, 0.0).warm_up && !cpu(0, 1.0).warm_up);
        assert_eq!(cpu(0, 0.0).context, cpu(0, 5.0).context);
        let first = d.contexts[cpu(0, 5.0).context as usize];
        assert_eq!((first.max, first.samples), (0.0, 1));
        // The third day sees the two days before it, nothing of its own.
        let third = d.contexts[cpu(2, 0.0).context as usize];
        assert_eq!(third.samples, 48);
        assert_eq!(third.max, 47.0, "no sample of the task itself");
        assert_eq!(third.p50, 23.0);
        assert_eq!(d.contexts[cpu(2, 20.0).context as usize], third);
        // What the model stores: the last 8 days of everything.
        let latest = d.latest[0][0].unwrap();
        assert_eq!((latest.samples, latest.max), (72, 71.0));
        assert_eq!(d.latest[0][1].unwrap().p99, 1e9);
    }
}
