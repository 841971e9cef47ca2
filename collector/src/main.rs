//! `headroom-collector`: serve (the default) or administer the store.

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use headroom_collector::{CollectorConfig, import, ingest::IngestOptions};
use headroom_serving::{grpc::GrpcOptions, shutdown, telemetry};
use headroom_store::{self as store, admin, lifecycle::LifecycleOptions};

/// Consumes Headroom usage samples from Kafka into PostgreSQL and answers
/// queries over them (gRPC headroom.v1.Collector).
#[derive(Debug, Parser)]
#[command(name = "headroom-collector", version)]
struct Cli {
    /// PostgreSQL URL.
    #[arg(
        long,
        global = true,
        env = "HEADROOM_DATABASE_URL",
        // The URL may hold a password: `--help` must not print it.
        hide_env_values = true,
        default_value = store::DEFAULT_DATABASE_URL
    )]
    database_url: String,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "HEADROOM_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "HEADROOM_LISTEN", default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    /// Largest database connection pool.
    #[arg(long, env = "HEADROOM_DB_CONNECTIONS", default_value_t = 8)]
    db_connections: u32,
    /// Serve queries only; do not consume the usage topic.
    #[arg(long, env = "HEADROOM_NO_INGEST")]
    no_ingest: bool,
    #[command(flatten)]
    ingest: IngestOptions,
    #[command(flatten)]
    lifecycle: LifecycleOptions,
    #[command(flatten)]
    grpc: GrpcOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume and serve (the default).
    Serve,
    /// Administer the store.
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// Import a public trace into the store (usage and what was provisioned).
    Import {
        #[command(subcommand)]
        trace: ImportCommand,
        /// The collector's raw retention (as `serve --raw-retention`): an
        /// import reaching back further is warned about, since the next
        /// retention pass deletes those raw samples.
        #[arg(long, env = "HEADROOM_RAW_RETENTION", default_value = "8d", value_parser = humantime::parse_duration, global = true)]
        raw_retention: std::time::Duration,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Alibaba cluster-trace-v2018 container files.
    Alibaba(import::AlibabaOptions),
    /// Bitbrains GWA-T-12 per-VM files.
    Bitbrains(import::BitbrainsOptions),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Apply the schema's migrations.
    Migrate,
    /// Drop every table and recreate the schema empty.
    Reset {
        /// Required: confirms that every stored sample is to be deleted.
        #[arg(long, env = "HEADROOM_RESET_CONFIRM")]
        confirm: bool,
    },
    /// Show the samples table's partitions with their ranges, sizes and
    /// row counts, and the oldest stored sample.
    Storage,
    /// Prepare partitions, drain the default partition and apply retention
    /// now, as the running collector does periodically.
    Maintain {
        #[command(flatten)]
        lifecycle: LifecycleOptions,
    },
    /// Write a selection of samples as CSV.
    Dump {
        #[command(flatten)]
        selection: admin::DumpSelection,
        /// Output file; standard output when absent.
        #[arg(long, env = "HEADROOM_DUMP_OUT", short)]
        out: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    if let Err(e) = run(cli).await {
        eprintln!(
            "headroom-collector: {}",
            headroom_options::one_line(e.as_ref())
        );
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None | Some(Command::Serve) => {
            let listener = tokio::net::TcpListener::bind(cli.serve.listen)
                .await
                .with_context(|| format!("while binding {}", cli.serve.listen))?;
            let config = CollectorConfig {
                database_url: cli.database_url,
                max_connections: cli.serve.db_connections,
                ingest: (!cli.serve.no_ingest).then_some(cli.serve.ingest),
                lifecycle: cli.serve.lifecycle,
                grpc: cli.serve.grpc,
            };
            headroom_collector::run(listener, shutdown::on_signals(), config).await?;
        }
        Some(Command::Import {
            trace,
            raw_retention,
        }) => {
            let pool = store::connect(&cli.database_url, 2)
                .await
                .context("while connecting to the database")?;
            let report = match trace {
                ImportCommand::Alibaba(o) => import::alibaba(&pool, &o).await?,
                ImportCommand::Bitbrains(o) => import::bitbrains(&pool, &o).await?,
            };
            eprintln!("{}", report.summary());
            if let Some(warning) = report.retention_warning(raw_retention, chrono::Utc::now()) {
                eprintln!("{warning}");
            }
        }
        Some(Command::Admin { action }) => {
            let pool = store::connect(&cli.database_url, 2)
                .await
                .context("while connecting to the database")?;
            match action {
                AdminCommand::Migrate => {
                    admin::migrate(&pool).await?;
                    eprintln!(
                        "schema up to date ({} migrations)",
                        store::MIGRATOR.iter().count()
                    );
                }
                AdminCommand::Reset { confirm } => {
                    admin::reset(&pool, confirm).await?;
                    eprintln!("store reset: every table dropped and recreated empty");
                }
                AdminCommand::Storage => {
                    admin::storage(&pool, &mut std::io::stdout().lock()).await?;
                }
                AdminCommand::Maintain { lifecycle } => {
                    let r =
                        store::lifecycle::maintain(&pool, &lifecycle, chrono::Utc::now()).await?;
                    eprintln!(
                        "{} partitions created, {} rows drained from the default partition, {} partitions dropped",
                        r.created.len(),
                        r.drained_rows,
                        r.dropped.len()
                    );
                }
                AdminCommand::Dump { selection, out } => {
                    let n = match out {
                        Some(path) => {
                            let file = std::fs::File::create(&path)
                                .with_context(|| format!("while creating {}", path.display()))?;
                            admin::dump(&pool, &selection, &mut std::io::BufWriter::new(file))
                                .await?
                        }
                        None => {
                            admin::dump(&pool, &selection, &mut std::io::stdout().lock()).await?
                        }
                    };
                    eprintln!("{n} samples written");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_option_is_also_an_environment_variable() {
        use clap::CommandFactory as _;
        headroom_options::assert_every_option_has_env(&super::Cli::command());
    }
}
