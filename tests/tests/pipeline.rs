//! The whole pipeline, end to end, with real parts: the three example
//! services run as real processes; the agent samples them (by process
//! name) and publishes to tansu; the collector consumes into PostgreSQL;
//! a model is trained from what was stored and served by the predictor;
//! the allocator recommends from the collector's history and plans from
//! the predictor. Every server is also listed and described by grpcurl
//! through reflection.

mod common;
#[path = "../../allocator/tests/support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use headroom_agent::TargetSpec;
use headroom_allocator::ServiceOptions;
use headroom_collector::{CollectorConfig, ingest::IngestOptions};
use headroom_proto::v1::{self, allocator_client::AllocatorClient};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use headroom_training::{
    Dataset, TrainOptions,
    dataset::Window,
    export,
    train::{self, Checkpointing},
};

/// Builds the example services (the test's own crate cannot name another
/// package's binaries) and returns the directory holding them.
fn example_binaries() -> anyhow::Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "headroom-examples"])
        .status()
        .context("while running cargo build -p headroom-examples")?;
    anyhow::ensure!(status.success(), "building the examples failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Ok(target.join("debug"))
}

/// Kills the example processes when the test ends, however it ends.
struct Examples(Vec<Child>);

impl Drop for Examples {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_flow_through_every_service_to_a_recommendation() -> anyhow::Result<()> {
    kit::init_logs();
    support::init_ort()?;
    let bins = example_binaries()?;
    let db = kit::TestDb::new().await?;
    let topic = kit::fresh_topic("pipeline", 2).await?;
    let dir = tempfile::tempdir()?;

    // The examples, uniquely named so the agent finds only these.
    let tag = std::process::id() % 10_000;
    let copy = |name: &str| -> anyhow::Result<PathBuf> {
        let to = dir.path().join(format!("{name}{tag}"));
        std::fs::copy(bins.join(name), &to)?;
        Ok(to)
    };
    let health = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let cache_bin = copy("hr-cache")?;
    let cruncher_bin = copy("hr-cruncher")?;
    // A second replica of the cruncher, on a second "host" (its own agent).
    let replica_bin = {
        // Short: the kernel keeps 15 bytes of a process name.
        let to = dir.path().join(format!("hr-crunch2{tag}"));
        std::fs::copy(bins.join("hr-cruncher"), &to)?;
        to
    };
    let ingest_bin = copy("hr-ingest")?;
    let quiet = || Stdio::null();
    let examples = Examples(vec![
        Command::new(&cache_bin)
            .args([
                "--listen",
                &health.to_string(),
                "--plateau-mib",
                "96",
                "--step-mib",
                "8",
            ])
            .stdout(quiet())
            .spawn()?,
        Command::new(&cruncher_bin)
            .args(["--peer", &health.to_string(), "--intensity", "0.5"])
            .stdout(quiet())
            .spawn()?,
        Command::new(&replica_bin)
            .args(["--peer", &health.to_string(), "--intensity", "0.5"])
            .stdout(quiet())
            .spawn()?,
        Command::new(&ingest_bin)
            .args(["--write-mib", "2"])
            .arg("--dir")
            .arg(dir.path().join("ingest"))
            .stdout(quiet())
            .spawn()?,
    ]);
    let name_of = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();

    // Collector (consuming), agent (sampling the examples every second).
    let mut ingest = IngestOptions::new(kit::kafka_brokers(), &topic);
    ingest.group = kit::unique_name("pipeline");
    ingest.session_timeout = Duration::from_secs(6);
    ingest.batch_wait = Duration::from_millis(50);
    let collector_config = CollectorConfig {
        database_url: db.url.clone(),
        max_connections: 4,
        ingest: Some(ingest),
        lifecycle: Default::default(),
        grpc: GrpcOptions::default(),
    };
    let collector =
        kit::spawn_server(|l, s| headroom_collector::run(l, s, collector_config)).await?;
    let services = ["cache", "cruncher", "ingest"];
    let mut agent_config =
        common::agent_config("pipeline-host", &topic, dir.path(), GrpcOptions::default());
    agent_config.targets = vec![
        TargetSpec::parse(&format!("cache=name:{}", name_of(&cache_bin)))?,
        TargetSpec::parse(&format!("cruncher=name:{}", name_of(&cruncher_bin)))?,
        TargetSpec::parse(&format!("ingest=name:{}", name_of(&ingest_bin)))?,
    ];
    agent_config.task = Some((
        "pipeline-1".into(),
        services.iter().map(|s| s.to_string()).collect(),
    ));
    agent_config.publisher.partitions = 2;
    agent_config.publisher.buffer_records = 1000;
    let agent = kit::spawn_server(move |l, s| headroom_agent::run(l, s, agent_config)).await?;
    let replica_dir = tempfile::tempdir()?;
    let mut replica_config = common::agent_config(
        "pipeline-host-2",
        &topic,
        replica_dir.path(),
        GrpcOptions::default(),
    );
    replica_config.targets = vec![TargetSpec::parse(&format!(
        "cruncher=name:{}",
        name_of(&replica_bin)
    ))?];
    replica_config.task = Some(("pipeline-1".into(), vec!["cruncher".to_string()]));
    replica_config.publisher.partitions = 2;
    let replica_agent =
        kit::spawn_server(move |l, s| headroom_agent::run(l, s, replica_config)).await?;

    // Two tasks: all three services for 25 samples, then the cache and
    // the cruncher alone for 15.
    let count = |task: &'static str, service: &'static str, resource: &'static str| {
        let pool = db.pool.clone();
        async move {
            headroom_store::count_samples(&pool, task, Some(service), Some(resource))
                .await
                .unwrap_or(0)
        }
    };
    let stored = |task: &'static str, services: &'static [&'static str], n: i64| {
        let count = &count;
        async move {
            kit::eventually(
                &format!("{n} samples of every series of {task}"),
                Duration::from_secs(90),
                || async {
                    for s in services {
                        for r in ["cpu", "memory"] {
                            if count(task, s, r).await < n {
                                return None;
                            }
                        }
                    }
                    Some(())
                },
            )
            .await
        }
    };
    stored("pipeline-1", &["cache", "cruncher", "ingest"], 25).await?;
    // Both replicas of the cruncher are stored, each under its instance.
    let replicas = kit::eventually(
        "both cruncher replicas stored",
        Duration::from_secs(90),
        || async {
            let services = headroom_store::list_services(&db.pool).await.ok()?;
            let n = services.iter().find(|s| s.name == "cruncher")?.instances;
            (n >= 2).then_some(n)
        },
    )
    .await?;
    assert_eq!(replicas, 2, "one instance per agent");
    replica_agent.stop().await?;
    let mut control = headroom_proto::v1::agent_client::AgentClient::new(agent.channel().await?);
    control
        .end_task(v1::EndTaskRequest {
            id: "pipeline-1".into(),
        })
        .await?;
    control
        .start_task(v1::StartTaskRequest {
            id: "pipeline-2".into(),
            services: vec!["cache".into(), "cruncher".into()],
            start: None,
        })
        .await?;
    stored("pipeline-2", &["cache", "cruncher"], 15).await?;
    agent.stop().await?;
    drop(examples);
    for s in services {
        for r in ["cpu", "memory"] {
            let n = count("pipeline-1", s, r).await;
            // The cruncher ran as two replicas: twice the samples.
            let most = if s == "cruncher" { 240 } else { 120 };
            assert!((25..=most).contains(&n), "{s}/{r}: {n} samples stored");
        }
    }

    // A model from what was stored, served by the predictor.
    let data = Dataset::from_postgres(&db.pool, &Window::default()).await?;
    let trained = train::train(
        &data,
        &TrainOptions {
            epochs: 20,
            ..Default::default()
        },
        Checkpointing::default(),
        "pipeline",
        false,
    )?;
    let model = dir.path().join("model.onnx");
    export::write_model(&model, &trained.net, &trained.spec)?;
    let predictor = support::predictor(model).await?;
    let allocator =
        support::allocator(&collector, &predictor.url(), ServiceOptions::default()).await?;

    // A recommendation: above the observed median, below the machine.
    let mut client = AllocatorClient::new(allocator.channel().await?);
    let answer = client
        .recommend(v1::RecommendRequest {
            workload: Some(v1::Workload {
                task_id: "pipeline-1".into(),
                ..Default::default()
            }),
            strategy: "percentile".into(),
            params: None,
        })
        .await?
        .into_inner();
    assert_eq!(answer.allocations.len(), 6);
    let cores = std::thread::available_parallelism()?.get() as f64;
    let memory: f64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .context("MemTotal")?
        * 1024.0;
    for a in &answer.allocations {
        let filter = headroom_store::resolve_filter(
            &db.pool,
            std::slice::from_ref(&a.service),
            std::slice::from_ref(&a.resource),
            &[],
            None,
            None,
        )
        .await?;
        let stats = headroom_store::usage_stats(&db.pool, &filter).await?;
        let median = stats
            .first()
            .context("statistics of a stored series")?
            .percentiles[0];
        let capacity = if a.resource == "cpu" { cores } else { memory };
        assert!(
            a.request >= median && a.request < capacity,
            "{}/{}: request {} against median {median} and capacity {capacity}",
            a.service,
            a.resource,
            a.request
        );
    }
    let by = |s: &str, r: &str| {
        answer
            .allocations
            .iter()
            .find(|a| a.service == s && a.resource == r)
            .map(|a| a.request)
            .unwrap_or_default()
    };
    assert!(
        by("cache", "memory") > 40e6,
        "the cache's memory grew to its plateau"
    );
    assert!(
        by("cruncher", "cpu") > by("ingest", "cpu"),
        "the cruncher is CPU-bound"
    );

    // A plan from the model for the same task.
    let plan = client
        .plan(v1::PlanRequest {
            workload: Some(v1::Workload {
                services: services.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            params: Some(v1::StrategyParams {
                horizon_seconds: Some(60.0),
                min_segment_seconds: Some(10.0),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(plan.plans.len(), 6);
    // One short task cannot calibrate the model's promise: each series is
    // planned by the model or says it fell back, and covers the horizon.
    assert!(
        plan.plans.iter().all(|p| {
            p.explanation.as_ref().is_some_and(|e| {
                e.model_version == "pipeline" || e.detail.starts_with("fell back from plan")
            }) && !p.segments.is_empty()
        }),
        "{:?}",
        plan.plans
    );

    // grpcurl lists exactly each server's own service (plus health and
    // reflection) and describes it through reflection.
    for (server, name) in [
        (&collector, "headroom.v1.Collector"),
        (&predictor, "headroom.v1.Predictor"),
        (&allocator, "headroom.v1.Allocator"),
    ] {
        let listed = kit::grpcurl(&[], server.addr, &["list"]).await?;
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            own_services(name),
            "{listed}"
        );
        let described = kit::grpcurl(&[], server.addr, &["describe", name]).await?;
        assert!(
            described.contains(&format!("service {}", name.rsplit('.').next().unwrap())),
            "{described}"
        );
    }
    allocator.stop().await?;
    predictor.stop().await?;
    collector.stop().await
}

/// What `grpcurl list` must print for the server of `name`, in its
/// (sorted) order: health, reflection and the server's own service only.
fn own_services(name: &str) -> Vec<&str> {
    let mut all = vec![
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        name,
    ];
    all.sort();
    all
}

/// The agent's own reflection, checked on a running agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_the_agent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = common::agent_config(
        "grpcurl-host",
        &kit::unique_name("grpcurl"),
        dir.path(),
        GrpcOptions::default(),
    );
    let agent = kit::spawn_server(move |l, s| headroom_agent::run(l, s, config)).await?;
    let listed = kit::grpcurl(&[], agent.addr, &["list"]).await?;
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        own_services("headroom.v1.Agent"),
        "{listed}"
    );
    let described = kit::grpcurl(&[], agent.addr, &["describe", "headroom.v1.Agent"]).await?;
    assert!(described.contains("rpc StartTask"), "{described}");
    agent.stop().await
}
