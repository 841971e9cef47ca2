//! Turns one Kafka record into rows to store, a task event, or a reason to
//! dead-letter it. Pure logic: no I/O, so it is property-tested.

use headroom_proto::{
    resource,
    time::to_unix_ms,
    v1::{ServiceUsage, Task, UsageMessage, usage_message::Body},
};
use headroom_store::{Row, TaskSeen};
use prost::Message;

/// Longest service name or task id accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Oldest accepted sample time: 2000-01-01T00:00:00Z, in ms.
const MIN_TS_MS: i64 = 946_684_800_000;

/// What to do with one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Store these rows and record this task.
    Usage {
        /// The samples.
        rows: Vec<Row>,
        /// The task they belong to.
        task: TaskSeen,
    },
    /// Record a task start or end.
    Task(TaskSeen),
    /// Send the record to the dead-letter topic with this reason.
    Reject(String),
}

/// Decodes and validates one record's payload. `now_ms` and `max_future_ms`
/// bound how far in the future a sample may lie.
pub fn decode(payload: Option<&[u8]>, now_ms: i64, max_future_ms: i64) -> Decoded {
    let Some(payload) = payload else {
        return Decoded::Reject("empty payload".into());
    };
    let message = match UsageMessage::decode(payload) {
        Ok(m) => m,
        Err(e) => return Decoded::Reject(format!("undecodable protobuf UsageMessage: {e}")),
    };
    let result = match message.body {
        Some(Body::Usage(usage)) => usage_rows(usage, now_ms, max_future_ms),
        Some(Body::Task(event)) => match event.task {
            Some(task) => task_seen(task).map(Decoded::Task),
            None => Err("task event without a task".into()),
        },
        None => Err("record has no body (a record kind this collector does not know?)".into()),
    };
    result.unwrap_or_else(Decoded::Reject)
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("missing {what}"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{what} longer than {MAX_NAME_LEN} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn check_ts(what: &str, ms: i64, now_ms: i64, max_future_ms: i64) -> Result<(), String> {
    if ms < MIN_TS_MS {
        return Err(format!("{what} {ms} ms is before 2000-01-01"));
    }
    if ms > now_ms.saturating_add(max_future_ms) {
        let ahead = (ms - now_ms) / 1000;
        return Err(format!("{what} is {ahead} s in the future"));
    }
    Ok(())
}

fn task_seen(task: Task) -> Result<TaskSeen, String> {
    check_name("task id", &task.id)?;
    let start = task
        .start
        .as_ref()
        .ok_or("task event without a start time")?;
    let start_ms = to_unix_ms(start);
    if start_ms < MIN_TS_MS {
        return Err(format!("task start {start_ms} ms is before 2000-01-01"));
    }
    let end_us = task.end.as_ref().map(|t| to_unix_ms(t) * 1000);
    if end_us.is_some_and(|e| e < start_ms * 1000) {
        return Err("task ends before it starts".into());
    }
    for s in &task.services {
        check_name("service name in the task", s)?;
    }
    Ok(TaskSeen {
        id: task.id,
        start_us: start_ms * 1000,
        end_us,
        services: task.services,
    })
}

/// The instance of a service a record measured: `host/instance` (an
/// instance an agent names, a container id, a pod or a path relative to its
/// discovery root, is only unique on its host), the host alone when the
/// record names no instance (two agents publishing one service are two
/// instances with no configuration), the instance alone without a host,
/// else `default`.
fn instance_of(usage: &ServiceUsage) -> String {
    match (usage.host.as_str(), usage.instance.as_str()) {
        ("", "") => DEFAULT_INSTANCE.to_string(),
        (host, "") => host.to_string(),
        ("", instance) => instance.to_string(),
        (host, instance) => format!("{host}/{instance}"),
    }
}

/// The instance of records that name neither an instance nor a host, and of
/// rows stored before instances existed.
pub const DEFAULT_INSTANCE: &str = "default";

fn usage_rows(usage: ServiceUsage, now_ms: i64, max_future_ms: i64) -> Result<Decoded, String> {
    check_name("service", &usage.service)?;
    check_name("task_id", &usage.task_id)?;
    if !usage.host.is_empty() {
        check_name("host", &usage.host)?;
    }
    let instance = instance_of(&usage);
    check_name("instance", &instance)?;
    let ts = usage.ts.as_ref().ok_or("missing ts")?;
    let ts_ms = to_unix_ms(ts);
    check_ts("ts", ts_ms, now_ms, max_future_ms)?;
    // A missing task start is taken as this sample's time; the stored start
    // is the earliest one any record reports.
    let start_ms = usage.task_start.as_ref().map_or(ts_ms, to_unix_ms);
    if start_ms > ts_ms {
        return Err("task_start is after the sample's ts".into());
    }
    if start_ms < MIN_TS_MS {
        return Err(format!("task_start {start_ms} ms is before 2000-01-01"));
    }
    if usage.measurements.is_empty() {
        return Err("no measurements".into());
    }
    let mut rows = Vec::with_capacity(usage.measurements.len());
    for m in &usage.measurements {
        let Some(name) = resource::KNOWN.iter().copied().find(|r| *r == m.resource) else {
            return Err(format!("unknown resource {:?}", m.resource));
        };
        if !m.value.is_finite() {
            return Err(format!("{name} value is not finite ({})", m.value));
        }
        if m.value < 0.0 {
            return Err(format!("{name} value {} is negative", m.value));
        }
        if rows.iter().any(|r: &Row| r.resource == name) {
            return Err(format!("{name} measured twice in one record"));
        }
        rows.push(Row {
            task_id: usage.task_id.clone(),
            service: usage.service.clone(),
            instance: instance.clone(),
            resource: name,
            value: m.value,
            ts_us: ts_ms * 1000,
        });
    }
    for s in &usage.task_services {
        check_name("service name in task_services", s)?;
    }
    let mut services = usage.task_services;
    services.push(usage.service);
    Ok(Decoded::Usage {
        rows,
        task: TaskSeen {
            id: usage.task_id,
            start_us: start_ms * 1000,
            end_us: None,
            services,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use headroom_proto::{
        time::from_unix_ms,
        v1::{Measurement, TaskEvent},
    };
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    fn usage(measurements: Vec<(&str, f64)>) -> ServiceUsage {
        ServiceUsage {
            host: "h".into(),
            service: "web".into(),
            task_id: "t1".into(),
            task_start: Some(from_unix_ms(NOW - 60_000)),
            ts: Some(from_unix_ms(NOW - 1_000)),
            measurements: measurements
                .into_iter()
                .map(|(r, v)| Measurement {
                    resource: r.into(),
                    value: v,
                })
                .collect(),
            interval_seconds: 1.0,
            sequence: 1,
            task_services: vec!["db".into()],
            instance: String::new(),
        }
    }

    fn encode(u: ServiceUsage) -> Vec<u8> {
        UsageMessage {
            body: Some(Body::Usage(u)),
        }
        .encode_to_vec()
    }

    fn reason(d: Decoded) -> String {
        match d {
            Decoded::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn valid_usage_becomes_one_row_per_measurement() {
        let d = decode(
            Some(&encode(usage(vec![("cpu", 0.5), ("memory", 1e9)]))),
            NOW,
            300_000,
        );
        let Decoded::Usage { rows, task } = d else {
            panic!("{d:?}")
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].resource, "cpu");
        assert_eq!(rows[1].value, 1e9);
        assert_eq!(rows[0].ts_us, (NOW - 1_000) * 1000);
        assert_eq!(task.start_us, (NOW - 60_000) * 1000);
        assert_eq!(task.services, vec!["db".to_string(), "web".to_string()]);
    }

    #[test]
    fn the_instance_is_host_and_instance_else_either_else_default() {
        let instance = |u: ServiceUsage| match decode(Some(&encode(u)), NOW, 300_000) {
            Decoded::Usage { rows, .. } => rows[0].instance.clone(),
            d => panic!("{d:?}"),
        };
        let base = || usage(vec![("cpu", 0.5)]);
        assert_eq!(instance(base()), "h", "the host when the record names none");
        assert_eq!(
            instance(ServiceUsage {
                instance: "web-7f9c".into(),
                ..base()
            }),
            "h/web-7f9c",
            "an agent's instance is unique on its host only"
        );
        assert_eq!(
            instance(ServiceUsage {
                host: String::new(),
                instance: "web-7f9c".into(),
                ..base()
            }),
            "web-7f9c"
        );
        assert_eq!(
            instance(ServiceUsage {
                host: String::new(),
                ..base()
            }),
            DEFAULT_INSTANCE
        );
    }

    #[test]
    fn pressure_and_limits_are_stored_like_usage() {
        let d = decode(
            Some(&encode(usage(vec![
                ("oom_kills", 1.0),
                ("cpu_throttled", 0.3),
                ("memory_limit", 64.0 * 1024.0 * 1024.0),
                ("cpu_limit", 0.2),
            ]))),
            NOW,
            300_000,
        );
        let Decoded::Usage { rows, .. } = d else {
            panic!("{d:?}")
        };
        let names: Vec<&str> = rows.iter().map(|r| r.resource).collect();
        assert_eq!(names, headroom_proto::resource::PRESSURE);
    }

    #[test]
    fn invalid_records_are_rejected_with_a_reason() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0xff, 0xff, 0xff], "undecodable"),
            (UsageMessage { body: None }.encode_to_vec(), "no body"),
            (
                encode(usage(vec![("gpu", 1.0)])),
                "unknown resource \"gpu\"",
            ),
            (encode(usage(vec![("cpu", f64::NAN)])), "not finite"),
            (encode(usage(vec![("cpu", -1.0)])), "negative"),
            (encode(usage(vec![("cpu", 1.0), ("cpu", 2.0)])), "twice"),
            (encode(usage(vec![])), "no measurements"),
            (
                encode(ServiceUsage {
                    ts: Some(from_unix_ms(NOW + 3_600_000)),
                    ..usage(vec![("cpu", 1.0)])
                }),
                "in the future",
            ),
            (
                encode(ServiceUsage {
                    service: String::new(),
                    ..usage(vec![("cpu", 1.0)])
                }),
                "missing service",
            ),
            (
                encode(ServiceUsage {
                    task_id: String::new(),
                    ..usage(vec![("cpu", 1.0)])
                }),
                "missing task_id",
            ),
        ];
        for (payload, want) in cases {
            let got = reason(decode(Some(&payload), NOW, 300_000));
            assert!(got.contains(want), "{got:?} does not mention {want:?}");
        }
        assert!(reason(decode(None, NOW, 0)).contains("empty"));
    }

    #[test]
    fn task_events_carry_start_and_end() {
        let payload = UsageMessage {
            body: Some(Body::Task(TaskEvent {
                host: "h".into(),
                task: Some(Task {
                    id: "t1".into(),
                    start: Some(from_unix_ms(NOW - 10_000)),
                    end: Some(from_unix_ms(NOW)),
                    services: vec!["a".into()],
                }),
            })),
        }
        .encode_to_vec();
        let Decoded::Task(t) = decode(Some(&payload), NOW, 0) else {
            panic!()
        };
        assert_eq!(t.end_us, Some(NOW * 1000));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(Some(&bytes), NOW, 300_000);
        }

        #[test]
        fn stored_values_are_finite_and_non_negative(values in proptest::collection::vec(any::<f64>(), 1..6)) {
            let ms: Vec<(&str, f64)> = resource::ALL.iter().copied().zip(values).collect();
            if let Decoded::Usage { rows, .. } = decode(Some(&encode(usage(ms))), NOW, 300_000) {
                for r in rows {
                    prop_assert!(r.value.is_finite() && r.value >= 0.0);
                }
            }
        }
    }
}
