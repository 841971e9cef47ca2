//! What the write path stores: one sample with its names, and what a task
//! looks like from the records seen so far.

/// One sample ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Task id.
    pub task_id: String,
    /// Service name (resolved to its id when written).
    pub service: String,
    /// Instance (replica) name, resolved to its id when written: the
    /// container, pod, watched target or host that was measured.
    pub instance: String,
    /// Resource name, one of the known resources.
    pub resource: &'static str,
    /// Value in the resource's unit.
    pub value: f64,
    /// Sample time, microseconds since the Unix epoch.
    pub ts_us: i64,
}

/// What a task looks like from the records seen so far.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSeen {
    /// Task id.
    pub id: String,
    /// Start, microseconds since the Unix epoch.
    pub start_us: i64,
    /// End, when the record reported it.
    pub end_us: Option<i64>,
    /// Services named by the record.
    pub services: Vec<String>,
}
