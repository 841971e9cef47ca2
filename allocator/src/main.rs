//! `headroom-allocator`: serve (the default), or ask a running allocator
//! for recommendations, plans and placements.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use headroom_allocator::{AllocatorConfig, ServiceOptions};
use headroom_proto::v1::{self, allocator_client::AllocatorClient};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry, tls::ClientTls};
use serde_json::json;

/// Recommends requests, limits, time-varying plans and placements for
/// services, from the collector's history and the predictor's model.
#[derive(Debug, Parser)]
#[command(name = "headroom-allocator", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format.
    #[arg(
        long,
        env = "HEADROOM_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: telemetry::LogFormat,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Debug, clap::Args)]
struct Serve {
    /// gRPC listen address.
    #[arg(long, env = "HEADROOM_LISTEN", default_value = "127.0.0.1:50054")]
    listen: SocketAddr,
    /// Collector URL.
    #[arg(
        long,
        env = "HEADROOM_COLLECTOR_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    collector: String,
    /// Predictor URL.
    #[arg(
        long,
        env = "HEADROOM_PREDICTOR_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    predictor: String,
    /// History the history-based strategies read, back from now.
    #[arg(long, env = "HEADROOM_HISTORY", default_value = "8d", value_parser = humantime::parse_duration)]
    history: std::time::Duration,
    /// Most services in one workload.
    #[arg(long, env = "HEADROOM_MAX_SERVICES", default_value_t = 10_000)]
    max_services: usize,
    /// How often the in-memory snapshot of every series' history is
    /// rebuilt ("0s": none; every request then reads its history).
    #[arg(long, env = "HEADROOM_SNAPSHOT_EVERY", default_value = "1m", value_parser = humantime::parse_duration)]
    snapshot_every: std::time::Duration,
    #[command(flatten)]
    grpc: GrpcOptions,
    /// TLS towards the collector and the predictor.
    #[command(flatten)]
    upstream_tls: ClientTls,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve headroom.v1.Allocator (the default).
    Serve,
    /// Requests and limits per service and resource.
    Recommend {
        #[command(flatten)]
        ask: Ask,
        /// max, percentile, predictive or plan.
        #[arg(long, default_value = "percentile")]
        strategy: String,
    },
    /// A time-varying allocation over the task's life.
    Plan {
        #[command(flatten)]
        ask: Ask,
    },
    /// Replay held-out tasks through the strategies and score them.
    Backtest {
        #[command(flatten)]
        server: Server,
        /// Held-out tasks started at or after this time (RFC 3339).
        #[arg(long, required_unless_present = "tasks")]
        split: Option<chrono::DateTime<chrono::Utc>>,
        /// Or these held-out tasks, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Strategies (all when empty), comma-separated.
        #[arg(long, value_delimiter = ',')]
        strategies: Vec<String>,
        /// Resources (cpu and memory when empty), comma-separated.
        #[arg(long, value_delimiter = ',')]
        resources: Vec<String>,
        /// Most held-out tasks (the newest).
        #[arg(long, default_value_t = 100)]
        max_tasks: u32,
        #[command(flatten)]
        tuning: Tuning,
        /// Output format of the table.
        #[arg(long, value_enum, default_value_t = TableFormat::Table)]
        output: TableFormat,
        /// Chart (PNG) of usage against each strategy's allocation for
        /// these services, comma-separated; one file per service and
        /// resource, named after --chart.
        #[arg(long, value_delimiter = ',', requires = "chart")]
        chart_services: Vec<String>,
        /// Chart file, e.g. backtest.png (becomes backtest-SERVICE-RESOURCE.png).
        #[arg(long)]
        chart: Option<std::path::PathBuf>,
    },
    /// Assign the services to nodes.
    Place {
        #[command(flatten)]
        ask: Ask,
        /// Nodes as NAME=CORES,BYTES (repeat).
        #[arg(long = "node", value_parser = parse_node, required = true)]
        nodes: Vec<v1::Node>,
        /// Pack the time-varying plans instead of static peaks.
        #[arg(long)]
        planned: bool,
        /// Strategy whose peaks are packed (static placement).
        #[arg(long, default_value = "percentile")]
        strategy: String,
    },
}

/// The allocator a client command talks to.
#[derive(Debug, Clone, clap::Args)]
struct Server {
    /// Allocator URL.
    #[arg(
        long,
        env = "HEADROOM_ALLOCATOR_URL",
        default_value = "http://127.0.0.1:50054"
    )]
    allocator: String,
    /// TLS towards the allocator (for an `https://` URL).
    #[command(flatten)]
    tls: ClientTls,
}

impl Server {
    async fn client(&self) -> anyhow::Result<AllocatorClient<tonic::transport::Channel>> {
        let channel = self
            .tls
            .endpoint(&self.allocator)?
            .connect()
            .await
            .with_context(|| format!("cannot reach the allocator at {}", self.allocator))?;
        Ok(AllocatorClient::new(channel))
    }
}

/// What every client command asks about.
#[derive(Debug, clap::Args)]
struct Ask {
    #[command(flatten)]
    server: Server,
    /// A stored task whose mix is allocated for.
    #[arg(long, conflicts_with = "services")]
    task: Option<String>,
    /// Services of the task, comma-separated.
    #[arg(long, value_delimiter = ',')]
    services: Vec<String>,
    /// Resources (cpu and memory when empty), comma-separated.
    #[arg(long, value_delimiter = ',')]
    resources: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
    /// Task duration to allocate for, in seconds.
    #[arg(long)]
    horizon_seconds: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Strategy parameters every command takes.
#[derive(Debug, Clone, clap::Args)]
struct Tuning {
    /// Accepted share of samples above the limit (predictive, plan).
    #[arg(long)]
    target_violation_rate: Option<f64>,
    /// Most resizes in a plan.
    #[arg(long)]
    max_resizes: Option<u32>,
    /// Shortest plan segment, in seconds.
    #[arg(long)]
    min_segment_seconds: Option<f64>,
    /// Limit as a multiple of the request.
    #[arg(long)]
    limit_ratio: Option<f64>,
}

impl Tuning {
    fn params(&self) -> v1::StrategyParams {
        v1::StrategyParams {
            target_violation_rate: self.target_violation_rate,
            max_resizes: self.max_resizes,
            min_segment_seconds: self.min_segment_seconds,
            limit_ratio: self.limit_ratio,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TableFormat {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// CSV with a header.
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// Kubernetes: a `resources:` patch per container (recommend) or the
    /// plan as a resize schedule.
    K8s,
}

fn parse_node(s: &str) -> Result<v1::Node, String> {
    let (name, caps) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=CORES,BYTES"))?;
    let (cpu, mem) = caps
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected NAME=CORES,BYTES"))?;
    Ok(v1::Node {
        name: name.to_string(),
        cpu_cores: cpu.parse().map_err(|e| format!("{s:?}: cores: {e}"))?,
        memory_bytes: mem.parse().map_err(|e| format!("{s:?}: bytes: {e}"))?,
    })
}

impl Ask {
    fn workload(&self) -> v1::Workload {
        v1::Workload {
            task_id: self.task.clone().unwrap_or_default(),
            services: self.services.clone(),
            resources: self.resources.clone(),
        }
    }

    fn params(&self) -> v1::StrategyParams {
        v1::StrategyParams {
            horizon_seconds: self.horizon_seconds,
            ..self.tuning.params()
        }
    }

    async fn client(&self) -> anyhow::Result<AllocatorClient<tonic::transport::Channel>> {
        self.server.client().await
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        None | Some(Command::Serve) => serve(cli.serve).await,
        Some(command) => ask(command).await,
    };
    if let Err(e) = result {
        eprintln!("headroom-allocator: {e:#}");
        std::process::exit(1);
    }
}

async fn serve(s: Serve) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("while binding {}", s.listen))?;
    let config = AllocatorConfig {
        collector: s.collector,
        predictor: s.predictor,
        service: ServiceOptions {
            history: s.history,
            max_services: s.max_services,
            snapshot_every: (!s.snapshot_every.is_zero()).then_some(s.snapshot_every),
        },
        grpc: s.grpc,
        upstream_tls: s.upstream_tls,
    };
    headroom_allocator::run(listener, shutdown::on_signals(), config).await?;
    Ok(())
}

/// A quantity in the unit Kubernetes writes it in.
fn k8s_quantity(resource: &str, value: f64) -> String {
    match resource {
        "cpu" => format!("{}m", (value * 1000.0).ceil() as u64),
        _ => format!("{}Mi", (value / 1048576.0).ceil() as u64),
    }
}

async fn ask(command: Command) -> anyhow::Result<()> {
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
    match command {
        Command::Serve => unreachable!("handled by main"),
        Command::Recommend { ask, strategy } => {
            let answer = ask
                .client()
                .await?
                .recommend(v1::RecommendRequest {
                    workload: Some(ask.workload()),
                    strategy,
                    params: Some(ask.params()),
                })
                .await
                .map_err(status)?
                .into_inner();
            match ask.output {
                Output::Table => {
                    println!(
                        "{:<24} {:<10} {:>14} {:>14} {:>8} {:>8}  unit",
                        "service", "resource", "request", "limit", "slack", "risk"
                    );
                    for a in &answer.allocations {
                        println!(
                            "{:<24} {:<10} {:>14.4} {:>14.4} {:>7.1}% {:>7.2}%  {}",
                            a.service,
                            a.resource,
                            a.request,
                            a.limit,
                            a.expected_slack * 100.0,
                            a.violation_risk * 100.0,
                            a.unit
                        );
                    }
                }
                Output::Json => {
                    let rows: Vec<_> = answer
                        .allocations
                        .iter()
                        .map(|a| {
                            let e = a.explanation.clone().unwrap_or_default();
                            json!({
                                "service": a.service, "resource": a.resource,
                                "request": a.request, "limit": a.limit, "unit": a.unit,
                                "expected_slack": a.expected_slack, "violation_risk": a.violation_risk,
                                "strategy": e.strategy, "samples_used": e.samples_used,
                                "model_version": e.model_version, "detail": e.detail,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                Output::K8s => {
                    // One strategic-merge patch per container (named as the service).
                    let mut services: Vec<&str> = answer
                        .allocations
                        .iter()
                        .map(|a| a.service.as_str())
                        .collect();
                    services.dedup();
                    for service in services {
                        println!(
                            "# kubectl patch deployment {service} --patch-file <this document>"
                        );
                        println!(
                            "spec:\n  template:\n    spec:\n      containers:\n      - name: {service}\n        resources:"
                        );
                        for part in ["requests", "limits"] {
                            println!("          {part}:");
                            for a in answer.allocations.iter().filter(|a| {
                                a.service == service
                                    && (a.resource == "cpu" || a.resource == "memory")
                            }) {
                                let v = if part == "requests" {
                                    a.request
                                } else {
                                    a.limit
                                };
                                println!(
                                    "            {}: {}",
                                    a.resource,
                                    k8s_quantity(&a.resource, v)
                                );
                            }
                        }
                        println!("---");
                    }
                }
            }
        }
        Command::Plan { ask } => {
            let answer = ask
                .client()
                .await?
                .plan(v1::PlanRequest {
                    workload: Some(ask.workload()),
                    params: Some(ask.params()),
                })
                .await
                .map_err(status)?
                .into_inner();
            match ask.output {
                Output::Table => {
                    println!("horizon {:.0} s", answer.horizon_seconds);
                    for p in &answer.plans {
                        println!("{} {} ({})", p.service, p.resource, p.unit);
                        for s in &p.segments {
                            println!(
                                "  {:>8.0} – {:>8.0} s  request {:>14.4}  limit {:>14.4}",
                                s.start_seconds, s.end_seconds, s.request, s.limit
                            );
                        }
                    }
                }
                Output::Json => {
                    let plans: Vec<_> = answer
                        .plans
                        .iter()
                        .map(|p| {
                            json!({
                                "service": p.service, "resource": p.resource, "unit": p.unit,
                                "segments": p.segments.iter().map(|s| json!({
                                    "start_seconds": s.start_seconds, "end_seconds": s.end_seconds,
                                    "request": s.request, "limit": s.limit,
                                })).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"horizon_seconds": answer.horizon_seconds, "plans": plans})
                        )?
                    );
                }
                Output::K8s => {
                    // In-place pod resizing: one resize patch per segment start.
                    println!(
                        "# resize schedule: at each offset after the task starts, apply the patch with"
                    );
                    println!("# kubectl patch pod <pod> --subresource resize --patch '<patch>'");
                    println!("schedule:");
                    for p in answer
                        .plans
                        .iter()
                        .filter(|p| p.resource == "cpu" || p.resource == "memory")
                    {
                        for s in &p.segments {
                            println!(
                                "- after: {:.0}s\n  container: {}\n  patch: '{{\"spec\":{{\"containers\":[{{\"name\":\"{}\",\"resources\":{{\"requests\":{{\"{}\":\"{}\"}},\"limits\":{{\"{}\":\"{}\"}}}}}}]}}}}'",
                                s.start_seconds,
                                p.service,
                                p.service,
                                p.resource,
                                k8s_quantity(&p.resource, s.request),
                                p.resource,
                                k8s_quantity(&p.resource, s.limit)
                            );
                        }
                    }
                }
            }
        }
        Command::Backtest {
            server,
            split,
            tasks,
            strategies,
            resources,
            max_tasks,
            tuning,
            output,
            chart_services,
            chart,
        } => {
            let answer = server
                .client()
                .await?
                .backtest(v1::BacktestRequest {
                    strategies,
                    split: split.map(|t| prost_types::Timestamp {
                        seconds: t.timestamp(),
                        nanos: t.timestamp_subsec_nanos() as i32,
                    }),
                    task_ids: tasks,
                    services: Vec::new(),
                    resources,
                    params: Some(tuning.params()),
                    max_tasks,
                    trace_services: chart_services,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_backtest(&answer, output)?;
            if let Some(path) = chart {
                for t in &answer.traces {
                    let file = chart_path(&path, &t.service, &t.resource);
                    backtest_chart(&file, t)?;
                    eprintln!("chart: {}", file.display());
                }
            }
        }
        Command::Place {
            ask,
            nodes,
            planned,
            strategy,
        } => {
            let answer = ask
                .client()
                .await?
                .place(v1::PlaceRequest {
                    workload: Some(ask.workload()),
                    nodes,
                    mode: if planned {
                        v1::PlacementMode::Planned
                    } else {
                        v1::PlacementMode::Static
                    } as i32,
                    solver: v1::Solver::Unspecified as i32,
                    strategy,
                    params: Some(ask.params()),
                })
                .await
                .map_err(status)?
                .into_inner();
            let rows: Vec<_> = answer
                .assignments
                .iter()
                .map(|a| json!({"service": a.service, "node": a.node}))
                .collect();
            match ask.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "assignments": rows, "nodes_used": answer.nodes_used,
                        "unplaced": answer.unplaced, "solver": answer.solver,
                    }))?
                ),
                _ => {
                    println!(
                        "{} nodes used ({} solver)",
                        answer.nodes_used, answer.solver
                    );
                    for a in &answer.assignments {
                        println!("  {:<24} -> {}", a.service, a.node);
                    }
                    for h in &answer.headroom {
                        let least_cpu =
                            h.points.iter().map(|p| p.cpu_free).fold(f64::MAX, f64::min);
                        let least_mem = h
                            .points
                            .iter()
                            .map(|p| p.memory_free)
                            .fold(f64::MAX, f64::min);
                        println!(
                            "  {:<24} least free: {least_cpu:.3} cores, {:.0} MiB",
                            h.node,
                            least_mem / 1048576.0
                        );
                    }
                    if !answer.unplaced.is_empty() {
                        println!("  unplaced: {}", answer.unplaced.join(", "));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The backtest table in `format`.
fn print_backtest(answer: &v1::BacktestResponse, format: TableFormat) -> anyhow::Result<()> {
    const HEADER: [&str; 8] = [
        "strategy",
        "resource",
        "relative_slack",
        "absolute_slack",
        "violation_rate",
        "oom_events",
        "changes",
        "samples",
    ];
    match format {
        TableFormat::Table => print!("{}", headroom_allocator::backtest::table(answer)),
        TableFormat::Json => {
            let rows: Vec<_> = answer
                .rows
                .iter()
                .map(|r| {
                    json!({
                        "strategy": r.strategy, "resource": r.resource,
                        "relative_slack": r.relative_slack, "absolute_slack": r.absolute_slack,
                        "violation_rate": r.violation_rate, "oom_events": r.oom_events,
                        "changes": r.changes, "samples": r.samples,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"task_ids": answer.task_ids, "rows": rows}))?
            );
        }
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            w.write_record(HEADER)?;
            for r in &answer.rows {
                w.write_record([
                    r.strategy.clone(),
                    r.resource.clone(),
                    r.relative_slack.to_string(),
                    r.absolute_slack.to_string(),
                    r.violation_rate.to_string(),
                    r.oom_events.to_string(),
                    r.changes.to_string(),
                    r.samples.to_string(),
                ])?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// `dir/stem-SERVICE-RESOURCE.ext` beside `path`.
fn chart_path(path: &std::path::Path, service: &str, resource: &str) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("backtest");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
    path.with_file_name(format!("{stem}-{service}-{resource}.{ext}"))
}

/// Usage of one traced series against each strategy's request.
fn backtest_chart(path: &std::path::Path, t: &v1::BacktestTrace) -> anyhow::Result<()> {
    use headroom_charts::{PALETTE, Series, line_chart};
    let mut series = vec![Series {
        label: "used".into(),
        points: t
            .seconds
            .iter()
            .copied()
            .zip(t.used.iter().copied())
            .collect(),
        color: (0, 0, 0),
    }];
    for (i, s) in t.strategies.iter().enumerate() {
        series.push(Series {
            label: s.strategy.clone(),
            points: t
                .seconds
                .iter()
                .copied()
                .zip(s.request.iter().copied())
                .collect(),
            color: PALETTE[i % PALETTE.len()],
        });
    }
    line_chart(
        path,
        &format!(
            "{} {} in task {}: usage and allocations",
            t.service, t.resource, t.task_id
        ),
        "seconds into the task",
        &format!("{} ({})", t.resource, t.unit),
        &series,
    )?;
    Ok(())
}
