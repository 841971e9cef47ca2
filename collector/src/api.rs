//! The `headroom.v1.Collector` gRPC service over the store.

use std::{collections::HashSet, pin::Pin, sync::Arc};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use headroom_proto::{
    resource,
    time::{from_unix_ms, to_unix_ms},
    v1::{self, collector_server::Collector},
};
use headroom_store::{self as store, StepAggregate};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    Shared,
    error::{Error, Result},
    ingest::decode::MAX_NAME_LEN,
};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
const DEFAULT_POINTS: u32 = 10_000;
const MAX_POINTS: u32 = 100_000;
const DEFAULT_CHUNK: u32 = 4096;
const MAX_CHUNK: u32 = 65_536;

/// The service implementation.
#[derive(Debug)]
pub(crate) struct CollectorApi {
    shared: Arc<Shared>,
}

impl CollectorApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.as_ref()
        .map(|t| DateTime::from_timestamp_millis(to_unix_ms(t)).unwrap_or_default())
}

fn to_proto_ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    from_unix_ms(t.timestamp_millis())
}

fn task_proto(t: store::TaskRow) -> v1::Task {
    v1::Task {
        id: t.id,
        start: Some(to_proto_ts(t.start_ts)),
        end: t.end_ts.map(to_proto_ts),
        services: t.services,
    }
}

fn page_size(requested: u32, default: u32, max: u32, what: &str) -> Result<u32> {
    match requested {
        0 => Ok(default),
        n if n > max => Err(Error::InvalidArgument(format!(
            "{what} {n} is above the limit of {max}"
        ))),
        n => Ok(n),
    }
}

/// Refuses names no sample can carry (the decoder stores none longer than
/// `MAX_NAME_LEN` or with a NUL byte, which PostgreSQL text cannot hold).
fn check_names<'a>(what: &str, names: impl IntoIterator<Item = &'a String>) -> Result<()> {
    for name in names {
        if name.len() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "{what} of {} bytes is longer than {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "{what} {:?} contains a NUL character",
                name.escape_debug().to_string()
            )));
        }
    }
    Ok(())
}

async fn resolve(shared: &Shared, filter: Option<&v1::UsageFilter>) -> Result<store::Filter> {
    let default = v1::UsageFilter::default();
    let f = filter.unwrap_or(&default);
    check_names("service", &f.services)?;
    check_names("resource", &f.resources)?;
    check_names("task id", &f.task_ids)?;
    check_names("instance", &f.instances)?;
    let filter = store::resolve_filter(
        &shared.pool,
        &f.services,
        &f.resources,
        &f.task_ids,
        ts(&f.start),
        ts(&f.end),
    )
    .await?;
    Ok(store::with_instances(&shared.pool, filter, &f.instances).await?)
}

/// Series page token: "task_id\u{1f}service_id\u{1f}resource_id".
fn parse_series_token(token: &str) -> Result<Option<(String, i32, i32)>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::InvalidArgument(format!(
            "page_token {token:?} is malformed: pass the next_page_token of the previous answer"
        ))
    };
    let mut parts = token.rsplitn(3, '\u{1f}');
    let r = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let s = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let t = parts.next().ok_or_else(bad)?.to_string();
    Ok(Some((t, s, r)))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Collector for CollectorApi {
    async fn list_services(
        &self,
        _: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let services = store::list_services(&self.shared.pool)
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|r| v1::ServiceInfo {
                id: r.id,
                name: r.name,
                instances: u32::try_from(r.instances).unwrap_or(u32::MAX),
            })
            .collect();
        Ok(Response::new(v1::ListServicesResponse { services }))
    }

    async fn list_resources(
        &self,
        _: Request<v1::ListResourcesRequest>,
    ) -> Result<Response<v1::ListResourcesResponse>, Status> {
        let resources = store::list_resources(&self.shared.pool)
            .await
            .map_err(Error::from)?
            .into_iter()
            .map(|r| v1::ResourceInfo {
                id: r.id,
                name: r.name,
                unit: r.unit,
            })
            .collect();
        Ok(Response::new(v1::ListResourcesResponse { resources }))
    }

    async fn list_tasks(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE, "page_size")?;
        let offset: i64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse::<u32>().map(i64::from).map_err(|_| {
                Error::InvalidArgument(format!(
                    "page_token {:?} is malformed: pass the next_page_token of the previous answer",
                    r.page_token
                ))
            })?
        };
        check_names("service", [&r.service])?;
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        let mut rows = store::list_tasks(
            &self.shared.pool,
            service,
            ts(&r.start),
            ts(&r.end),
            offset,
            i64::from(size) + 1,
        )
        .await
        .map_err(Error::from)?;
        let next_page_token = if rows.len() > size as usize {
            rows.truncate(size as usize);
            (offset + i64::from(size)).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListTasksResponse {
            tasks: rows.into_iter().map(task_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_task(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::InvalidArgument("id is empty: name the task to get".into()).into());
        }
        check_names("task id", [&id])?;
        match store::get_task(&self.shared.pool, &id)
            .await
            .map_err(Error::from)?
        {
            Some(t) => Ok(Response::new(task_proto(t))),
            None => Err(Error::NotFound(format!("unknown task {id:?}")).into()),
        }
    }

    async fn query_usage(
        &self,
        request: Request<v1::QueryUsageRequest>,
    ) -> Result<Response<v1::QueryUsageResponse>, Status> {
        let r = request.into_inner();
        let size = page_size(r.page_size, DEFAULT_PAGE, MAX_PAGE, "page_size")?;
        let max_points = page_size(r.max_points, DEFAULT_POINTS, MAX_POINTS, "max_points")?;
        let step_us = match &r.step {
            None => None,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::InvalidArgument(format!(
                    "step must not be negative, got {}s {}ns",
                    d.seconds, d.nanos
                ))
                .into());
            }
            Some(d) => Some(d.seconds.saturating_mul(1_000_000) + i64::from(d.nanos) / 1000)
                .filter(|us| *us > 0),
        };
        let aggregate = match v1::Aggregate::try_from(r.aggregate) {
            Ok(v1::Aggregate::Unspecified | v1::Aggregate::Mean) => StepAggregate::Mean,
            Ok(v1::Aggregate::Min) => StepAggregate::Min,
            Ok(v1::Aggregate::Max) => StepAggregate::Max,
            Ok(v1::Aggregate::Percentile) => {
                if !(r.percentile > 0.0 && r.percentile <= 100.0) {
                    return Err(Error::InvalidArgument(format!(
                        "percentile must be in (0, 100] with AGGREGATE_PERCENTILE, got {}",
                        r.percentile
                    ))
                    .into());
                }
                StepAggregate::Percentile(r.percentile / 100.0)
            }
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "aggregate {} is unknown (AGGREGATE_MEAN, _MIN, _MAX or _PERCENTILE)",
                    r.aggregate
                ))
                .into());
            }
        };
        let filter = resolve(&self.shared, r.filter.as_ref()).await?;
        let after = parse_series_token(&r.page_token)?;
        let mut keys = store::list_series(&self.shared.pool, &filter, after, i64::from(size) + 1)
            .await
            .map_err(Error::from)?;
        let next_page_token = if keys.len() > size as usize {
            keys.truncate(size as usize);
            let last = &keys[keys.len() - 1];
            format!(
                "{}\u{1f}{}\u{1f}{}",
                last.task_id, last.service_id, last.resource_id
            )
        } else {
            String::new()
        };
        // Steps the rollup buckets tile are read from the rollups.
        // Rollups pool instances: a filter naming some reads raw samples.
        let resolution = step_us
            .filter(|_| filter.instance_ids.is_none())
            .and_then(store::rollup::for_step);
        let mut series = Vec::with_capacity(keys.len());
        for key in keys {
            let mut points = match (resolution, step_us) {
                (Some(res), Some(step)) => store::rollup::points(
                    &self.shared.pool,
                    &key,
                    &filter,
                    step,
                    aggregate,
                    res,
                    max_points as usize + 1,
                )
                .await
                .map_err(Error::from)?,
                _ => store::series_points(
                    &self.shared.pool,
                    &key,
                    &filter,
                    step_us.map(|s| (s, aggregate)),
                    i64::from(max_points) + 1,
                )
                .await
                .map_err(Error::from)?,
            };
            let truncated = points.len() > max_points as usize;
            points.truncate(max_points as usize);
            series.push(v1::Series {
                task_id: key.task_id,
                service: key.service,
                resource: key.resource,
                points: points
                    .into_iter()
                    .map(|(t, value)| v1::Point {
                        ts: Some(to_proto_ts(t)),
                        value,
                    })
                    .collect(),
                truncated,
            });
        }
        Ok(Response::new(v1::QueryUsageResponse {
            series,
            next_page_token,
            resolution: resolution_of(resolution) as i32,
        }))
    }

    async fn usage_stats(
        &self,
        request: Request<v1::UsageStatsRequest>,
    ) -> Result<Response<v1::UsageStatsResponse>, Status> {
        let r = request.into_inner();
        let filter = resolve(&self.shared, r.filter.as_ref()).await?;
        let resolution = store::rollup::choose_for_stats(
            &self.shared.pool,
            &filter,
            self.shared.raw_stats_limit,
        )
        .await
        .map_err(Error::from)?;
        let stats = match resolution {
            None => store::usage_stats(&self.shared.pool, &filter)
                .await
                .map_err(Error::from)?,
            Some(res) => store::rollup::stats(&self.shared.pool, &filter, res)
                .await
                .map_err(Error::from)?,
        };
        let stats = stats
            .into_iter()
            .map(|s| {
                let p = |i: usize| s.percentiles.get(i).copied().unwrap_or_default();
                v1::UsageStat {
                    count: s.count as u64,
                    min: s.min,
                    mean: s.mean,
                    max: s.max,
                    stddev: s.stddev,
                    p50: p(0),
                    p90: p(1),
                    p95: p(2),
                    p99: p(3),
                    service: s.service,
                    resource: s.resource,
                    unit: s.unit,
                }
            })
            .collect();
        Ok(Response::new(v1::UsageStatsResponse {
            stats,
            resolution: resolution_of(resolution) as i32,
        }))
    }

    type StreamUsageStream = BoxStream<v1::Sample>;

    async fn stream_usage(
        &self,
        request: Request<v1::StreamUsageRequest>,
    ) -> Result<Response<Self::StreamUsageStream>, Status> {
        let r = request.into_inner();
        if let Some(bad) = r.resources.iter().find(|n| !resource::is_known(n)) {
            return Err(Error::NotFound(format!(
                "unknown resource {bad:?} (known: {})",
                resource::KNOWN.join(", ")
            ))
            .into());
        }
        let instances: HashSet<String> = r.instances.into_iter().collect();
        let services: HashSet<String> = r.services.into_iter().collect();
        let resources: HashSet<String> = r.resources.into_iter().collect();
        let tasks: HashSet<String> = r.task_ids.into_iter().collect();
        let mut live = self.shared.live.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let (tx, rx) = mpsc::channel::<Result<v1::Sample, Status>>(1024);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("collector is shutting down"))).await;
                        return;
                    }
                    r = live.recv() => r,
                };
                let rows = match received {
                    Ok(rows) => rows,
                    Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "stream fell behind: {n} batches were not delivered; subscribe again"
                            ))))
                            .await;
                        return;
                    }
                };
                for row in rows.iter() {
                    if (!services.is_empty() && !services.contains(&row.service))
                        || (!resources.is_empty() && !resources.contains(row.resource))
                        || (!tasks.is_empty() && !tasks.contains(&row.task_id))
                        || (!instances.is_empty() && !instances.contains(&row.instance))
                    {
                        continue;
                    }
                    let sample = v1::Sample {
                        task_id: row.task_id.clone(),
                        service: row.service.clone(),
                        resource: row.resource.to_string(),
                        value: row.value,
                        ts: Some(from_unix_ms(row.ts_us / 1000)),
                        instance: row.instance.clone(),
                    };
                    if tx.send(Ok(sample)).await.is_err() {
                        return; // client hung up
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportSamplesStream = BoxStream<v1::ExportSamplesResponse>;

    async fn export_samples(
        &self,
        request: Request<v1::ExportSamplesRequest>,
    ) -> Result<Response<Self::ExportSamplesStream>, Status> {
        let r = request.into_inner();
        let chunk = page_size(r.chunk_size, DEFAULT_CHUNK, MAX_CHUNK, "chunk_size")? as usize;
        let filter = resolve(&self.shared, r.filter.as_ref()).await?;
        let (services, resources) = store::names(&self.shared.pool).await.map_err(Error::from)?;
        let instances = store::instance_names(&self.shared.pool)
            .await
            .map_err(Error::from)?;
        // Old tasks whose raw samples are gone are exported per minute;
        // imported allocations are kept as they are.
        let rollup = if r.provisioned {
            None
        } else {
            store::rollup::choose_for_export(&self.shared.pool, &filter)
                .await
                .map_err(Error::from)?
        };
        let query = if r.provisioned {
            store::export_provisioned_query()
        } else {
            store::export_query(rollup)
        };
        let pool = self.shared.pool.clone();
        let (tx, rx) = mpsc::channel::<Result<v1::ExportSamplesResponse, Status>>(4);
        tokio::spawn(async move {
            let mut rows = store::export_rows(&pool, &filter, &query)
                .map_err(|e| Error::from(store::Error::from(e)))
                .chunks(chunk);
            let mut seen_tasks = HashSet::new();
            while let Some(batch) = rows.next().await {
                let result = async {
                    let batch: Vec<store::ExportRow> = batch.into_iter().collect::<Result<_>>()?;
                    let new_tasks: Vec<String> = batch
                        .iter()
                        .filter(|r| seen_tasks.insert(r.task_id.clone()))
                        .map(|r| r.task_id.clone())
                        .collect();
                    let tasks = if new_tasks.is_empty() {
                        Vec::new()
                    } else {
                        store::get_tasks(&pool, &new_tasks)
                            .await
                            .map_err(Error::from)?
                            .into_iter()
                            .map(task_proto)
                            .collect()
                    };
                    let samples = batch
                        .into_iter()
                        .map(|r| v1::ExportedSample {
                            seconds_into_task: (r.ts - r.start_ts)
                                .num_microseconds()
                                .unwrap_or_default()
                                as f64
                                / 1e6,
                            task_id: r.task_id,
                            service: services.get(&r.service_id).cloned().unwrap_or_default(),
                            resource: resources.get(&r.resource_id).cloned().unwrap_or_default(),
                            value: r.value,
                            ts: Some(to_proto_ts(r.ts)),
                            instance: instances.get(&r.instance_id).cloned().unwrap_or_default(),
                        })
                        .collect();
                    Ok::<_, Error>(v1::ExportSamplesResponse {
                        samples,
                        tasks,
                        resolution: resolution_of(rollup) as i32,
                    })
                }
                .await;
                let failed = result.is_err();
                if tx.send(result.map_err(Status::from)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The wire name of the data an answer was computed from.
fn resolution_of(rollup: Option<store::rollup::Resolution>) -> v1::Resolution {
    match rollup {
        None => v1::Resolution::Raw,
        Some(store::rollup::Resolution::Minute) => v1::Resolution::Minute,
        Some(store::rollup::Resolution::Hour) => v1::Resolution::Hour,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_tokens_round_trip_and_reject_garbage() {
        assert_eq!(parse_series_token("").unwrap(), None);
        assert_eq!(
            parse_series_token("task\u{1f}with\u{1f}sep\u{1f}3\u{1f}4").unwrap(),
            Some(("task\u{1f}with\u{1f}sep".to_string(), 3, 4))
        );
        assert!(parse_series_token("nope").is_err());
        assert!(parse_series_token("t\u{1f}x\u{1f}1").is_err());
    }

    #[test]
    fn page_sizes_default_and_refuse_above_the_limit() {
        assert_eq!(page_size(0, 100, 1000, "page_size").unwrap(), 100);
        assert_eq!(page_size(7, 100, 1000, "page_size").unwrap(), 7);
        let e = page_size(1001, 100, 1000, "page_size").unwrap_err();
        assert!(e.to_string().contains("1000"));
    }
}
