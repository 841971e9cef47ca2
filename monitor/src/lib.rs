//! What the monitor shows, gathered from the running services: a service's
//! real usage over a task (collector), the model's quantile band for the
//! task's mix over the same seconds (predictor), and the allocation the
//! allocator recommends for the task. The prototype's `monitor.py`, which
//! plotted real usage against the prediction.

use headroom_proto::v1::{
    self, allocator_client::AllocatorClient, collector_client::CollectorClient,
    predictor_client::PredictorClient,
};
use tonic::transport::Channel;

/// Where the services are and what to show.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Service to show.
    #[arg(long, env = "HEADROOM_MONITOR_SERVICE")]
    pub service: String,
    /// Resource to show.
    #[arg(long, env = "HEADROOM_MONITOR_RESOURCE", default_value = "cpu")]
    pub resource: String,
    /// Task to show (default: the newest task that ran the service).
    #[arg(long, env = "HEADROOM_MONITOR_TASK")]
    pub task: Option<String>,
    /// Collector URL.
    #[arg(
        long,
        env = "HEADROOM_COLLECTOR_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub collector: String,
    /// Predictor URL ("" to show no prediction).
    #[arg(
        long,
        env = "HEADROOM_PREDICTOR_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub predictor: String,
    /// Allocator URL ("" to show no allocation).
    #[arg(
        long,
        env = "HEADROOM_ALLOCATOR_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    pub allocator: String,
    /// Strategy of the allocation shown.
    #[arg(long, env = "HEADROOM_MONITOR_STRATEGY", default_value = "percentile")]
    pub strategy: String,
    /// TLS towards the services (for `https://` URLs).
    #[command(flatten)]
    pub tls: headroom_serving::tls::ClientTls,
}

/// One picture of a task: what was used, what was predicted, what is
/// allocated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    /// Task shown.
    pub task: String,
    /// Its mix of services.
    pub mix: Vec<String>,
    /// Whether it has ended.
    pub ended: bool,
    /// Unit of the values.
    pub unit: String,
    /// (seconds into the task, value) samples.
    pub used: Vec<(f64, f64)>,
    /// Predicted curves: (quantile level, points).
    pub predicted: Vec<(f64, Vec<(f64, f64)>)>,
    /// Model version of the prediction.
    pub model_version: String,
    /// Recommended request (the allocation), when an allocator answered.
    pub allocation: Option<f64>,
    /// Why something could not be shown (an upstream unavailable).
    pub notes: Vec<String>,
}

impl Frame {
    /// Chart series: usage, each predicted quantile, the allocation.
    pub fn series(&self) -> Vec<headroom_charts::Series> {
        use headroom_charts::{PALETTE, Series};
        let mut out = vec![Series {
            label: "used".into(),
            points: self.used.clone(),
            color: (0, 0, 0),
            joined: true,
        }];
        for (i, (level, points)) in self.predicted.iter().enumerate() {
            out.push(Series {
                label: format!("predicted p{}", (level * 100.0).round()),
                points: points.clone(),
                color: PALETTE[i % 3],
                joined: true,
            });
        }
        if let Some(a) = self.allocation {
            let end = self
                .used
                .last()
                .map(|p| p.0)
                .into_iter()
                .chain(
                    self.predicted
                        .iter()
                        .filter_map(|c| c.1.last().map(|p| p.0)),
                )
                .fold(1.0, f64::max);
            out.push(Series {
                label: "allocation".into(),
                points: vec![(0.0, a), (end, a)],
                color: PALETTE[3],
                joined: true,
            });
        }
        out
    }

    /// The chart's title.
    pub fn title(&self, service: &str, resource: &str) -> String {
        format!(
            "{service} {resource} in task {}{}",
            self.task,
            if self.ended { "" } else { " (running)" }
        )
    }
}

async fn channel(url: &str, tls: &headroom_serving::tls::ClientTls) -> anyhow::Result<Channel> {
    use anyhow::Context as _;
    tls.endpoint(url)?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach {url} (is the service running? see --help for its URL option)")
        })
}

fn secs(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + t.nanos as f64 * 1e-9
}

/// Gathers a frame. The collector must answer; the predictor and the
/// allocator are optional and their absence is noted in the frame.
pub async fn gather(sel: &Selection) -> anyhow::Result<Frame> {
    let mut collector = CollectorClient::new(channel(&sel.collector, &sel.tls).await?);
    let task = match &sel.task {
        Some(id) => collector
            .get_task(v1::GetTaskRequest { id: id.clone() })
            .await
            .map_err(|e| anyhow::anyhow!("task {id}: {}", e.message()))?
            .into_inner(),
        None => collector
            .list_tasks(v1::ListTasksRequest {
                service: sel.service.clone(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?
            .into_inner()
            .tasks
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no task ran {:?}", sel.service))?,
    };
    let start = task.start.as_ref().map_or(0.0, secs);
    let mut frame = Frame {
        task: task.id.clone(),
        mix: task.services.clone(),
        ended: task.end.is_some(),
        ..Frame::default()
    };
    let mut stream = collector
        .export_samples(v1::ExportSamplesRequest {
            filter: Some(v1::UsageFilter {
                services: vec![sel.service.clone()],
                resources: vec![sel.resource.clone()],
                task_ids: vec![task.id.clone()],
                ..Default::default()
            }),
            chunk_size: 0,
            provisioned: false,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    while let Some(chunk) = stream.message().await? {
        frame.used.extend(
            chunk
                .samples
                .iter()
                .map(|s| (s.ts.as_ref().map_or(0.0, secs) - start, s.value)),
        );
    }
    let horizon = task
        .end
        .as_ref()
        .map(|e| secs(e) - start)
        .or_else(|| frame.used.last().map(|p| p.0))
        .unwrap_or(60.0)
        .max(1.0);
    if !sel.predictor.is_empty() {
        match predict(sel, &task.services, horizon).await {
            Ok((curves, unit, version)) => {
                frame.predicted = curves;
                frame.unit = unit;
                frame.model_version = version;
            }
            Err(e) => frame.notes.push(format!("no prediction: {e}")),
        }
    }
    if !sel.allocator.is_empty() {
        match allocate(sel, &task.id).await {
            Ok(a) => frame.allocation = Some(a),
            Err(e) => frame.notes.push(format!("no allocation: {e}")),
        }
    }
    Ok(frame)
}

type Curves = Vec<(f64, Vec<(f64, f64)>)>;

async fn predict(
    sel: &Selection,
    mix: &[String],
    horizon: f64,
) -> anyhow::Result<(Curves, String, String)> {
    let mut client = PredictorClient::new(channel(&sel.predictor, &sel.tls).await?);
    let answer = client
        .predict_profile(v1::PredictProfileRequest {
            task_services: mix.to_vec(),
            service: sel.service.clone(),
            resource: sel.resource.clone(),
            horizon_seconds: horizon,
            step_seconds: (horizon / 120.0).max(1.0),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    let profile = answer
        .profile
        .ok_or_else(|| anyhow::anyhow!("an empty profile"))?;
    let curves = profile
        .curves
        .iter()
        .map(|c| {
            (
                c.quantile,
                profile
                    .seconds
                    .iter()
                    .copied()
                    .zip(c.values.iter().copied())
                    .collect(),
            )
        })
        .collect();
    Ok((curves, profile.unit, answer.model_version))
}

async fn allocate(sel: &Selection, task: &str) -> anyhow::Result<f64> {
    let mut client = AllocatorClient::new(channel(&sel.allocator, &sel.tls).await?);
    let answer = client
        .recommend(v1::RecommendRequest {
            workload: Some(v1::Workload {
                task_id: task.to_string(),
                resources: vec![sel.resource.clone()],
                ..Default::default()
            }),
            strategy: sel.strategy.clone(),
            params: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        .into_inner();
    answer
        .allocations
        .iter()
        .find(|a| a.service == sel.service && a.resource == sel.resource)
        .map(|a| a.request)
        .ok_or_else(|| anyhow::anyhow!("no allocation for {}/{}", sel.service, sel.resource))
}
