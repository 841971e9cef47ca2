//! `headroom-allocator`: serve (the default), or ask a running allocator
//! for recommendations, plans, placements and backtests.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use headroom_allocator::{
    AllocatorConfig, ServiceOptions,
    allocate::{DEFAULT_HISTORY, DEFAULT_MAX_SERVICES, Workload},
    backtest::{BacktestAsk, DEFAULT_MAX_TASKS, Sweep},
    grpc::client::Client,
    params::{Overrides, Peaks},
    place::{Node, PlaceAsk, Solver},
    render::{self, Output, TableFormat},
    strategy::{DEFAULT_STRATEGY, Strategy},
};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry, tls::ClientTls};

/// Where the allocator listens by default.
const DEFAULT_LISTEN: &str = "127.0.0.1:50054";
/// Where the collector listens by default.
const DEFAULT_COLLECTOR_URL: &str = "http://127.0.0.1:50052";
/// Where the predictor listens by default.
const DEFAULT_PREDICTOR_URL: &str = "http://127.0.0.1:50053";
/// How often the history snapshot is rebuilt by default.
const DEFAULT_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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
    #[arg(long, env = "HEADROOM_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Collector URL.
    #[arg(long, env = "HEADROOM_COLLECTOR_URL", default_value = DEFAULT_COLLECTOR_URL)]
    collector: String,
    /// Predictor URL.
    #[arg(long, env = "HEADROOM_PREDICTOR_URL", default_value = DEFAULT_PREDICTOR_URL)]
    predictor: String,
    /// History the history-based strategies read, back from now.
    #[arg(long, env = "HEADROOM_HISTORY", default_value_t = DEFAULT_HISTORY.into())]
    history: humantime::Duration,
    /// Most services in one workload.
    #[arg(long, env = "HEADROOM_MAX_SERVICES", default_value_t = DEFAULT_MAX_SERVICES)]
    max_services: usize,
    /// How often the in-memory snapshot of every series' history is
    /// rebuilt ("0s": none; every request then reads its history).
    #[arg(long, env = "HEADROOM_SNAPSHOT_EVERY", default_value_t = DEFAULT_SNAPSHOT_EVERY.into())]
    snapshot_every: humantime::Duration,
    #[command(flatten)]
    grpc: GrpcOptions,
    /// TLS towards the collector and the predictor.
    #[command(flatten)]
    upstream_tls: ClientTls,
    /// Serve the report page over plain HTTP on this address
    /// (`/report?services=a,b`, `/report.json`); off when absent. Not with
    /// --tls-cert: use `headroom-allocator report --html` there.
    #[arg(long, env = "HEADROOM_REPORT_LISTEN", conflicts_with = "tls_cert")]
    report_listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve headroom.v1.Allocator (the default).
    Serve,
    /// Requests and limits per service and resource.
    Recommend {
        #[command(flatten)]
        ask: Ask,
        /// max, percentile, vpa, auto, predictive or plan.
        #[arg(long, env = "HEADROOM_STRATEGY", default_value_t = DEFAULT_STRATEGY)]
        strategy: Strategy,
    },
    /// A time-varying allocation over the task's life.
    Plan {
        #[command(flatten)]
        ask: Ask,
    },
    /// Replay held-out tasks through the strategies and score them.
    Backtest(Backtest),
    /// One self-contained HTML page (and optionally its numbers as JSON)
    /// to forward to a service's owners: usage against every strategy,
    /// the plan as a timeline, the backtest with its charts.
    Report(Report),
    /// Assign the services to nodes.
    Place {
        #[command(flatten)]
        ask: Ask,
        /// Nodes as NAME=CORES,BYTES (repeat, or `;`-separated in the
        /// environment).
        #[arg(long = "node", env = "HEADROOM_NODES", value_delimiter = ';', value_parser = parse_node, required = true)]
        nodes: Vec<Node>,
        /// Pack the time-varying plans instead of static peaks.
        #[arg(long, env = "HEADROOM_PLANNED")]
        planned: bool,
        /// Strategy whose peaks are packed (static placement).
        #[arg(long, env = "HEADROOM_STRATEGY", default_value_t = DEFAULT_STRATEGY)]
        strategy: Strategy,
        /// Replicas as SERVICE=N (repeat, or `,`-separated); a service not
        /// named gets as many as the collector saw in one task.
        #[arg(long = "replicas", env = "HEADROOM_REPLICAS", value_delimiter = ',', value_parser = parse_replicas)]
        replicas: Vec<(String, u32)>,
    },
}

#[derive(Debug, clap::Args)]
struct Backtest {
    #[command(flatten)]
    server: Server,
    /// Held-out tasks started at or after this time (RFC 3339).
    #[arg(long, env = "HEADROOM_SPLIT", required_unless_present = "tasks")]
    split: Option<chrono::DateTime<chrono::Utc>>,
    /// Or these held-out tasks, comma-separated.
    #[arg(long, env = "HEADROOM_TASKS", value_delimiter = ',', value_parser = headroom_options::list_item)]
    tasks: Vec<String>,
    /// Strategies (all when empty), comma-separated.
    #[arg(long, env = "HEADROOM_STRATEGIES", value_delimiter = ',')]
    strategies: Vec<Strategy>,
    /// Only these services of the held-out tasks (all when empty),
    /// comma-separated.
    #[arg(long, env = "HEADROOM_SERVICES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    services: Vec<String>,
    /// Resources (cpu and memory when empty), comma-separated.
    #[arg(long, env = "HEADROOM_RESOURCES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    resources: Vec<String>,
    /// Most held-out tasks (the newest).
    #[arg(long, env = "HEADROOM_MAX_TASKS", default_value_t = DEFAULT_MAX_TASKS)]
    max_tasks: usize,
    #[command(flatten)]
    tuning: Tuning,
    /// Output format of the table.
    #[arg(long, env = "HEADROOM_OUTPUT", value_enum, default_value_t = TableFormat::Table)]
    output: TableFormat,
    /// Chart (PNG) of usage against each strategy's allocation for these
    /// services, comma-separated; one file per service and resource, named
    /// after --chart.
    #[arg(
        long,
        env = "HEADROOM_CHART_SERVICES",
        value_delimiter = ',',
        value_parser = headroom_options::list_item,
        requires = "chart"
    )]
    chart_services: Vec<String>,
    /// Chart file, e.g. backtest.png (becomes backtest-SERVICE-RESOURCE.png).
    #[arg(long, env = "HEADROOM_CHART")]
    chart: Option<PathBuf>,
    /// Also sweep the strategies' settings and report the slack–violation
    /// frontier (the standard sweep: targets 0.1–5 %, percentiles 50–99 ×
    /// margins 0–30 %, auto's weights 1–100, vpa).
    #[arg(long, env = "HEADROOM_FRONTIER")]
    frontier: bool,
    /// Frontier chart file, e.g. frontier.png (becomes
    /// frontier-RESOURCE.png); implies --frontier.
    #[arg(long, env = "HEADROOM_FRONTIER_CHART")]
    frontier_chart: Option<PathBuf>,
    /// Frontier points as CSV into this file; implies --frontier.
    #[arg(long, env = "HEADROOM_FRONTIER_CSV")]
    frontier_csv: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct Report {
    #[command(flatten)]
    server: Server,
    /// The page to write (one HTML file, no external assets).
    #[arg(long, env = "HEADROOM_REPORT_HTML")]
    html: PathBuf,
    /// Also write the page's numbers as JSON (base units), as the
    /// `recommend`, `plan` and `backtest` JSON outputs write them.
    #[arg(long, env = "HEADROOM_REPORT_JSON")]
    json: Option<PathBuf>,
    /// A stored task whose mix is reported on.
    #[arg(long, env = "HEADROOM_TASK", conflicts_with = "services")]
    task: Option<String>,
    /// Services reported on, comma-separated.
    #[arg(long, env = "HEADROOM_SERVICES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    services: Vec<String>,
    /// Resources (cpu and memory when empty), comma-separated.
    #[arg(long, env = "HEADROOM_RESOURCES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    resources: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
    /// Backtest tasks started at or after this time (RFC 3339); no
    /// backtest when absent.
    #[arg(long, env = "HEADROOM_SPLIT")]
    split: Option<chrono::DateTime<chrono::Utc>>,
    /// Collector URL, for current usage ("" to leave it out).
    #[arg(long, env = "HEADROOM_COLLECTOR_URL", default_value = DEFAULT_COLLECTOR_URL)]
    collector: String,
    /// Current usage over this much history, back from now.
    #[arg(long, env = "HEADROOM_HISTORY", default_value_t = DEFAULT_HISTORY.into())]
    history: humantime::Duration,
}

/// The allocator a client command talks to.
#[derive(Debug, Clone, clap::Args)]
struct Server {
    /// Allocator URL.
    #[arg(long, env = "HEADROOM_ALLOCATOR_URL", default_value_t = format!("http://{DEFAULT_LISTEN}"))]
    allocator: String,
    /// TLS towards the allocator (for an `https://` URL).
    #[command(flatten)]
    tls: ClientTls,
}

impl Server {
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.allocator, &self.tls).await?)
    }
}

/// What every client command asks about.
#[derive(Debug, clap::Args)]
struct Ask {
    #[command(flatten)]
    server: Server,
    /// A stored task whose mix is allocated for.
    #[arg(long, env = "HEADROOM_TASK", conflicts_with = "services")]
    task: Option<String>,
    /// Services of the task, comma-separated.
    #[arg(long, env = "HEADROOM_SERVICES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    services: Vec<String>,
    /// Resources (cpu and memory when empty), comma-separated.
    #[arg(long, env = "HEADROOM_RESOURCES", value_delimiter = ',', value_parser = headroom_options::list_item)]
    resources: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
    /// Task duration to allocate for, in seconds.
    #[arg(long, env = "HEADROOM_HORIZON_SECONDS", allow_negative_numbers = true)]
    horizon_seconds: Option<f64>,
    /// Output format.
    #[arg(long, env = "HEADROOM_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Strategy parameters every command takes.
#[derive(Debug, Clone, clap::Args)]
struct Tuning {
    /// Accepted share of samples above the limit (predictive, plan).
    #[arg(
        long,
        env = "HEADROOM_TARGET_VIOLATION_RATE",
        allow_negative_numbers = true
    )]
    target_violation_rate: Option<f64>,
    /// Most resizes in a plan.
    #[arg(long, env = "HEADROOM_MAX_RESIZES", allow_negative_numbers = true)]
    max_resizes: Option<u32>,
    /// Shortest plan segment, in seconds.
    #[arg(
        long,
        env = "HEADROOM_MIN_SEGMENT_SECONDS",
        allow_negative_numbers = true
    )]
    min_segment_seconds: Option<f64>,
    /// Limit as a multiple of the request.
    #[arg(long, env = "HEADROOM_LIMIT_RATIO", allow_negative_numbers = true)]
    limit_ratio: Option<f64>,
    /// Target percentile of CPU samples (percentile, vpa), in (0, 100].
    #[arg(long, env = "HEADROOM_CPU_PERCENTILE", allow_negative_numbers = true)]
    cpu_percentile: Option<f64>,
    /// Target percentile of memory peaks (percentile, vpa), in (0, 100].
    #[arg(
        long,
        env = "HEADROOM_MEMORY_PERCENTILE",
        allow_negative_numbers = true
    )]
    memory_percentile: Option<f64>,
    /// Margin over the target, a fraction (percentile, vpa: 0.15).
    #[arg(long, env = "HEADROOM_MARGIN", allow_negative_numbers = true)]
    margin: Option<f64>,
    /// Decay half-life of the history, in seconds (default a day).
    #[arg(
        long,
        env = "HEADROOM_HALF_LIFE_SECONDS",
        allow_negative_numbers = true
    )]
    half_life_seconds: Option<f64>,
    /// `percentile` never below the observed median (true/false).
    #[arg(long, env = "HEADROOM_MEDIAN_FLOOR")]
    median_floor: Option<bool>,
    /// Memory peaks of `percentile`: task (per task and replica) or window
    /// (per replica and 24 h, as the VPA).
    #[arg(long, env = "HEADROOM_MEMORY_PEAKS", value_parser = parse_peaks)]
    memory_peaks: Option<Peaks>,
    /// `percentile` at least the VPA's minimum, 25m and 250Mi (true/false).
    #[arg(long, env = "HEADROOM_MINIMUM")]
    minimum: Option<bool>,
    /// `auto`: cost of a CPU/IO overrun (default 10).
    #[arg(long, env = "HEADROOM_OVERRUN_WEIGHT", allow_negative_numbers = true)]
    overrun_weight: Option<f64>,
    /// `auto`: cost of a memory overrun, an OOM kill (default 1000).
    #[arg(long, env = "HEADROOM_OOM_WEIGHT", allow_negative_numbers = true)]
    oom_weight: Option<f64>,
    /// `auto`: cost of a resize (default 0.01).
    #[arg(long, env = "HEADROOM_CHANGE_WEIGHT", allow_negative_numbers = true)]
    change_weight: Option<f64>,
}

fn parse_peaks(s: &str) -> Result<Peaks, String> {
    Peaks::parse(s).map_err(|e| e.to_string())
}

impl Tuning {
    fn params(&self) -> Overrides {
        Overrides {
            target_violation_rate: self.target_violation_rate,
            max_resizes: self.max_resizes,
            min_segment_seconds: self.min_segment_seconds,
            limit_ratio: self.limit_ratio,
            cpu_percentile: self.cpu_percentile,
            memory_percentile: self.memory_percentile,
            margin: self.margin,
            half_life_seconds: self.half_life_seconds,
            median_floor: self.median_floor,
            memory_peaks: self.memory_peaks,
            minimum: self.minimum,
            overrun_weight: self.overrun_weight,
            oom_weight: self.oom_weight,
            change_weight: self.change_weight,
            horizon_seconds: None,
        }
    }
}

/// `SERVICE=N`, N at least 1.
fn parse_replicas(s: &str) -> Result<(String, u32), String> {
    let bad = || format!("replicas {s:?}: expected SERVICE=N with N at least 1, e.g. api=3");
    let (service, n) = s.split_once('=').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if service.trim().is_empty() || n == 0 {
        return Err(bad());
    }
    Ok((service.trim().to_string(), n))
}

fn parse_node(s: &str) -> Result<Node, String> {
    let expected = || format!("{s:?}: expected NAME=CORES,BYTES");
    let (name, caps) = s.split_once('=').ok_or_else(expected)?;
    let (cpu, mem) = caps.split_once(',').ok_or_else(expected)?;
    Ok(Node {
        name: name.to_string(),
        cpu: cpu.parse().map_err(|e| format!("{s:?}: cores: {e}"))?,
        memory: mem.parse().map_err(|e| format!("{s:?}: bytes: {e}"))?,
    })
}

impl Ask {
    fn workload(&self) -> Workload {
        Workload {
            task_id: self.task.clone(),
            services: self.services.clone(),
            resources: self.resources.clone(),
        }
    }

    fn params(&self) -> Overrides {
        Overrides {
            horizon_seconds: self.horizon_seconds,
            ..self.tuning.params()
        }
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
        eprintln!(
            "headroom-allocator: {}",
            headroom_options::one_line(e.as_ref())
        );
        std::process::exit(1);
    }
}

async fn serve(s: Serve) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("while binding {}", s.listen))?;
    let snapshot_every = *s.snapshot_every;
    let shutdown = shutdown::on_signals();
    if let Some(addr) = s.report_listen {
        use headroom_allocator::report::http;
        let report = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("while binding the report listener {addr}"))?;
        // The page is gathered through this allocator's own API.
        let own = listener.local_addr()?;
        let ip = if own.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            own.ip()
        };
        let source = http::ReportSource {
            allocator: format!("http://{}", SocketAddr::new(ip, own.port())),
            collector: Some((
                s.collector.clone(),
                s.upstream_tls.clone(),
                s.history.as_secs_f64(),
            )),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(report, source, stop).await {
                tracing::error!(error = %e, "the report listener stopped");
            }
        });
    }
    let config = AllocatorConfig {
        collector: s.collector,
        predictor: s.predictor,
        service: ServiceOptions {
            history: *s.history,
            max_services: s.max_services,
            snapshot_every: (!snapshot_every.is_zero()).then_some(snapshot_every),
        },
        grpc: s.grpc,
        upstream_tls: s.upstream_tls,
    };
    headroom_allocator::run(listener, shutdown, config).await?;
    Ok(())
}

/// Asks a running allocator and prints the answer.
async fn ask(command: Command) -> anyhow::Result<()> {
    let out = match command {
        Command::Serve => unreachable!("handled by main"),
        Command::Recommend { ask, strategy } => {
            let client = ask.server.client().await?;
            let answer = client
                .recommend(&ask.workload(), strategy, &ask.params())
                .await?;
            render::recommendations(&answer, ask.output)?
        }
        Command::Plan { ask } => {
            let client = ask.server.client().await?;
            let answer = client.plan(&ask.workload(), &ask.params()).await?;
            render::plans(&answer, ask.output)?
        }
        Command::Place {
            ask,
            nodes,
            planned,
            strategy,
            replicas,
        } => {
            let client = ask.server.client().await?;
            let answer = client
                .place(&PlaceAsk {
                    workload: ask.workload(),
                    nodes,
                    strategy: if planned { Strategy::Plan } else { strategy },
                    solver: Solver::Auto,
                    params: ask.params(),
                    replicas: replicas.into_iter().collect(),
                })
                .await?;
            render::placement(&answer, ask.output)?
        }
        Command::Backtest(b) => return backtest(b).await,
        Command::Report(r) => return report(r).await,
    };
    headroom_options::print_out(&out)?;
    Ok(())
}

async fn backtest(b: Backtest) -> anyhow::Result<()> {
    let answer = b
        .server
        .client()
        .await?
        .backtest(&BacktestAsk {
            strategies: b.strategies,
            split: b.split.map(|t| t.timestamp_micros() as f64 * 1e-6),
            task_ids: b.tasks,
            services: b.services,
            resources: b.resources,
            params: b.tuning.params(),
            max_tasks: Some(b.max_tasks),
            trace_services: b.chart_services,
            sweep: (b.frontier || b.frontier_chart.is_some() || b.frontier_csv.is_some())
                .then(Sweep::standard),
        })
        .await?;
    headroom_options::print_out(&render::backtest(&answer, b.output)?)?;
    if let Some(path) = b.chart {
        for t in &answer.traces {
            let file = render::chart_path(&path, &t.service, &t.resource);
            render::chart(&file, t)?;
            eprintln!("chart: {}", file.display());
        }
    }
    if let Some(path) = b.frontier_csv {
        std::fs::write(&path, render::frontier_csv(&answer)?)
            .with_context(|| format!("while writing {}", path.display()))?;
        eprintln!("frontier: {}", path.display());
    }
    if let Some(path) = b.frontier_chart {
        let mut resources: Vec<&str> = answer
            .frontier
            .iter()
            .map(|p| p.resource.as_str())
            .collect();
        resources.sort();
        resources.dedup();
        for resource in resources {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("frontier");
            let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("png");
            let file = path.with_file_name(format!("{stem}-{resource}.{ext}"));
            render::frontier_chart(&file, &answer, resource)?;
            eprintln!("frontier chart: {}", file.display());
        }
    }
    Ok(())
}

async fn report(r: Report) -> anyhow::Result<()> {
    use headroom_allocator::report;
    let client = r.server.client().await?;
    let workload = Workload {
        task_id: r.task.clone(),
        services: r.services.clone(),
        resources: r.resources.clone(),
    };
    let ask = report::ReportAsk::new(
        workload,
        r.tuning.params(),
        r.split.map(|split| split.timestamp_micros() as f64 * 1e-6),
        (!r.collector.is_empty()).then(|| {
            (
                r.collector.clone(),
                r.server.tls.clone(),
                r.history.as_secs_f64(),
            )
        }),
    );
    let page = report::gather(&client, &ask).await?;
    std::fs::write(&r.html, report::html(&page)?)
        .with_context(|| format!("while writing {}", r.html.display()))?;
    if let Some(path) = &r.json {
        std::fs::write(path, report::json(&page)?)
            .with_context(|| format!("while writing {}", path.display()))?;
    }
    for note in &page.notes {
        eprintln!("headroom-allocator: not in the report: {note}");
    }
    eprintln!("report: {}", r.html.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every option of every subcommand reads an environment variable too.
    #[test]
    fn every_option_is_also_an_environment_variable() {
        headroom_options::assert_every_option_has_env(&Cli::command());
        Cli::command().debug_assert();
    }

    #[test]
    fn nodes_parse_and_bad_ones_are_named() {
        let n = parse_node("a=4,8589934592").unwrap();
        assert_eq!((n.name.as_str(), n.cpu, n.memory), ("a", 4.0, 8589934592.0));
        assert!(parse_node("a=4").unwrap_err().contains("NAME=CORES,BYTES"));
    }

    /// Lists as people type them ("a, b") and negative numbers without
    /// `=` reach the server, which names the field of a bad value.
    #[test]
    fn lists_are_trimmed_and_negative_numbers_parse() {
        let cli = Cli::try_parse_from([
            "headroom-allocator",
            "backtest",
            "--split",
            "2026-01-01T00:00:00Z",
            "--services",
            "vm-1, vm-2",
            "--strategies",
            "auto, percentile",
            "--target-violation-rate",
            "-0.1",
        ])
        .unwrap();
        let Some(Command::Backtest(b)) = cli.command else {
            panic!("a backtest");
        };
        assert_eq!(b.services, ["vm-1", "vm-2"]);
        assert_eq!(b.strategies, [Strategy::Auto, Strategy::Percentile]);
        assert_eq!(b.tuning.target_violation_rate, Some(-0.1));
        let e = Cli::try_parse_from(["headroom-allocator", "recommend", "--services", "a,,b"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty item"), "{e}");
    }
}
