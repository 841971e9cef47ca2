//! What the allocator reads from the collector, as domain types: tasks,
//! samples per series, and per-series summaries.

use std::collections::{BTreeMap, HashMap};

use crate::strategy::Summary;

/// Summaries per (service, resource).
pub type Summaries = HashMap<(String, String), Summary>;

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    /// Id.
    pub id: String,
    /// Start, unix seconds.
    pub start: f64,
    /// End, unix seconds, when it ended.
    pub end: Option<f64>,
    /// Its mix of services, sorted.
    pub services: Vec<String>,
}

/// One observed sample of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    /// Unix time, seconds.
    pub ts: f64,
    /// Index of its task in the history's task list.
    pub task: usize,
    /// Value in the resource's unit.
    pub value: f64,
}

/// Samples of several series, with the tasks they belong to.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Tasks referenced by the samples.
    pub tasks: Vec<TaskInfo>,
    /// Samples per (service, resource), in time order.
    pub series: BTreeMap<(String, String), Vec<Obs>>,
}

impl History {
    /// `self` and `other` as one history: tasks in both once, samples of a
    /// task in both once (taken from `self`).
    pub fn merge(mut self, other: History) -> History {
        let mut index: std::collections::HashMap<String, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let had: std::collections::HashSet<usize> = index.values().copied().collect();
        let mut map = Vec::with_capacity(other.tasks.len());
        for t in other.tasks {
            let i = *index.entry(t.id.clone()).or_insert_with(|| {
                self.tasks.push(t);
                self.tasks.len() - 1
            });
            map.push(i);
        }
        for (key, obs) in other.series {
            let into = self.series.entry(key).or_default();
            into.extend(
                obs.into_iter()
                    .map(|o| Obs {
                        task: map[o.task],
                        ..o
                    })
                    .filter(|o| !had.contains(&o.task)),
            );
            into.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        }
        self
    }

    /// Samples of one series (empty when none).
    pub fn of(&self, service: &str, resource: &str) -> &[Obs] {
        self.series
            .get(&(service.to_string(), resource.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}

/// How long a task of `mix` is expected to run: the longest finished task
/// in `tasks` with exactly this mix, else the longest of them all. The
/// longest, not the mean: usage that grows over a task (memory) must be
/// covered to its end.
pub fn expected_duration(tasks: &[TaskInfo], mix: &[String]) -> Option<f64> {
    let done = || {
        tasks
            .iter()
            .filter_map(|t| t.end.map(|e| (e - t.start, t.services == mix)))
            .filter(|d| d.0 > 0.0)
    };
    let longest = |v: Vec<f64>| v.into_iter().reduce(f64::max);
    longest(done().filter(|d| d.1).map(|d| d.0).collect())
        .or_else(|| longest(done().map(|d| d.0).collect()))
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
