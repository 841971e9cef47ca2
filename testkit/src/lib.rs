//! The integration-test harness every Headroom test shares: a fresh
//! PostgreSQL database per test, unique Kafka topics and consumer groups on
//! the local broker, and servers started on `127.0.0.1:0`.
//!
//! Locations come from the environment with local defaults:
//! `HEADROOM_TEST_DATABASE_URL` (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `HEADROOM_TEST_KAFKA`
//! (default `127.0.0.1:9092`).

pub mod bench;
pub mod broker;
pub mod group;
pub mod pki;

pub use broker::PrivateBroker;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};
use sqlx::{Connection, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Admin URL of the test PostgreSQL server.
pub fn admin_database_url() -> String {
    std::env::var("HEADROOM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Bootstrap servers of the test Kafka-protocol broker.
pub fn kafka_brokers() -> String {
    std::env::var("HEADROOM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A name no other test (in this or any concurrent run) uses.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// Sends test logs to the test's captured output (once per process).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// Name of the database.
    pub name: String,
    /// URL to connect to it.
    pub url: String,
    /// A small pool connected to it.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> anyhow::Result<Self> {
        let admin = admin_database_url();
        let name = unique_name("headroom_test");
        let mut conn = PgConnection::connect(&admin)
            .await
            .with_context(|| format!("while connecting to the test PostgreSQL at {admin}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("while creating database {name}"))?;
        conn.close().await.ok();
        let url = replace_database(&admin, &name)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .with_context(|| format!("while connecting to {name}"))?;
        Ok(Self { name, url, pool })
    }

    /// Whether a session opened with `url` (this database with TLS
    /// parameters) is encrypted, as PostgreSQL's `pg_stat_ssl` reports it.
    pub async fn session_uses_tls(url: &str) -> anyhow::Result<bool> {
        let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        Ok(ssl)
    }

    /// The one integer a check query answers (`NULL` is 0): counts a
    /// benchmark or test reads beyond the store's own API.
    pub async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        let v: Option<i64> = sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("while running check SQL: {sql}"))?;
        Ok(v.unwrap_or(0))
    }

    /// Runs fixture SQL a test needs beyond the store's own API (an
    /// operator's constraint, a table a test inspects), failing with the
    /// statement when PostgreSQL refuses it.
    /// Returns the rows it affected.
    pub async fn fixture(&self, sql: &str) -> anyhow::Result<u64> {
        let done = sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .with_context(|| format!("while running fixture SQL: {sql}"))?;
        Ok(done.rows_affected())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A plain thread with its own runtime removes the database whatever
        // runtime the test used. The pool is not closed from there: its
        // connections belong to the test's runtime, which this drop blocks;
        // FORCE ends them instead.
        let name = self.name.clone();
        let admin = admin_database_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// `url` with its database (path) replaced by `database`.
fn replace_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let Some(scheme_end) = base.find("://") else {
        bail!("not a URL: {url}");
    };
    let authority_start = scheme_end + 3;
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// Client settings for a consumer in a test: a short session timeout,
/// because the broker delays a group join by about half of it.
pub fn consumer_config(group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    config
}

/// Client settings for a producer in a test.
pub fn producer_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka_brokers())
        .set("message.timeout.ms", "30000");
    config
}

/// Creates `topic` with `partitions` partitions (the broker does not create
/// topics on first use). An existing topic is accepted.
pub async fn create_topic(topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_on(&kafka_brokers(), topic, partitions).await
}

/// [`create_topic`] on the broker at `brokers` (a private one).
pub async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("while creating a Kafka admin client")?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("while creating topic {topic} on {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("topic {name} could not be created: {code}"),
        }
    }
    Ok(())
}

/// A unique topic name, created with `partitions` partitions.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> anyhow::Result<String> {
    let topic = unique_name(prefix);
    create_topic(&topic, partitions).await?;
    Ok(topic)
}

/// A server started by [`spawn_server`].
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Cancel to shut it down.
    pub shutdown: CancellationToken,
    /// The server's task; its output is the server's result.
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// `http://addr`, for a tonic client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to the server.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        tonic::transport::Channel::from_shared(self.url())?
            .connect()
            .await
            .with_context(|| format!("while connecting to {}", self.url()))
    }

    /// Shuts the server down and waits for its result.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task panicked")?
    }
}

/// Runs the real `grpcurl` (`HEADROOM_GRPCURL`, installed by `scripts/stack
/// up`) in plaintext: `grpcurl -plaintext FLAGS… addr ARGS…`; returns its
/// stdout, or an error holding its stderr.
pub async fn grpcurl(flags: &[&str], addr: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let bin = std::env::var("HEADROOM_GRPCURL")
        .context("HEADROOM_GRPCURL is not set: run `scripts/stack up` and source .stack/env")?;
    let out = tokio::process::Command::new(&bin)
        .arg("-plaintext")
        .args(flags)
        .arg(addr.to_string())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("while running {bin}"))?;
    anyhow::ensure!(
        out.status.success(),
        "grpcurl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts any service's `run(listener, shutdown)` on `127.0.0.1:0`.
pub async fn spawn_server<F, Fut, E>(run: F) -> anyhow::Result<TestServer>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let fut = run(listener, shutdown.clone());
    let task = tokio::spawn(async move { fut.await.map_err(Into::into) });
    Ok(TestServer {
        addr,
        shutdown,
        task,
    })
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after
/// `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "t2").unwrap(),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h", "t3").unwrap(),
            "postgres://h/t3"
        );
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("a"), unique_name("a"));
    }
}

/// A PostgreSQL server of a test's own (initdb in a temporary folder, its
/// own port), so a test can stop and start the database under a running
/// service without disturbing other tests.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates and starts a fresh cluster.
    pub fn start() -> anyhow::Result<Self> {
        let bin = match std::env::var_os("HEADROOM_PG_BIN") {
            Some(b) => b.into(),
            None => {
                let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                    .context("PostgreSQL server binaries not found under /usr/lib/postgresql (set HEADROOM_PG_BIN)")?
                    .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                    .filter(|p| p.join("initdb").exists())
                    .collect();
                versions.sort();
                versions
                    .pop()
                    .context("no initdb under /usr/lib/postgresql/*/bin")?
            }
        };
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = std::env::temp_dir().join(unique_name("headroom_pg"));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let this = Self {
            dir,
            bin,
            port,
            as_postgres,
        };
        if as_postgres {
            run_command(
                std::process::Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&this.dir),
            )?;
        }
        let data = this.dir.join("data");
        run_command(this.command("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]))?;
        this.start_again()?;
        Ok(this)
    }

    fn command(&self, tool: &str) -> std::process::Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        }
    }

    /// URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) -> anyhow::Result<()> {
        run_command(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"]),
        )
    }

    /// Starts the stopped server again.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        run_command(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-o", &options, "-w", "start"]),
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_command(command: &mut std::process::Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("while running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The path of one of this workspace's binaries (`headroom-train`, …) as
/// `cargo test --workspace` builds it: `$HEADROOM_BIN_DIR/NAME` when that is
/// set, otherwise `NAME` in the directory above the running test executable
/// (`target/<profile>/deps/…` → `target/<profile>/`). Fails, naming the
/// build command, when it is not there.
pub fn workspace_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = match std::env::var_os("HEADROOM_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("while locating the test executable")?;
            exe.parent()
                .and_then(|deps| deps.parent())
                .context("the test executable has no target directory")?
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as `cargo test --workspace` does) or set HEADROOM_BIN_DIR",
        path.display()
    );
    Ok(path)
}

/// Trains a usage model with the real `headroom-train` binary (so tests of
/// the servers need not compile the trainer): `headroom-train train ARGS
/// --quiet`, failing with its stderr when it fails.
pub async fn train_model(args: &[&str]) -> anyhow::Result<()> {
    let bin = workspace_binary("headroom-train")?;
    let out = tokio::process::Command::new(&bin)
        .arg("train")
        .args(args)
        .arg("--quiet")
        .output()
        .await
        .with_context(|| format!("while running {}", bin.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "headroom-train train {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A loopback address with a port free at the time of the call, for a
/// child process's listener (e.g. `--metrics-listen`).
pub fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The value of the Prometheus metric `name` (a sample line without
/// labels, or the sum over its labelled lines) served at
/// `http://addr/metrics`; `None` when the process has not reported it.
pub async fn scrape_metric(addr: SocketAddr, name: &str) -> anyhow::Result<Option<f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("while connecting to the metrics at {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let mut total = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some(' ') => rest.trim(),
            Some('{') => rest.rsplit_once(' ').map_or("", |(_, v)| v),
            _ => continue,
        };
        let v: f64 = value
            .parse()
            .with_context(|| format!("metric line {line:?}"))?;
        *total.get_or_insert(0.0) += v;
    }
    Ok(total)
}

/// The values of the Prometheus metric `name` served at
/// `http://addr/metrics`, by the value of its label `label` (lines without
/// that label are skipped): e.g. `headroom_collector_partition_assigned`
/// by `partition`.
pub async fn scrape_by_label(
    addr: SocketAddr,
    name: &str,
    label: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("while connecting to the metrics at {addr}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let prefix = format!("{label}=\"");
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(v) = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix(&prefix))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("metric line {line:?}"))?;
        out.insert(v.to_string(), value);
    }
    Ok(out)
}

/// Trains a model on a CSV dump (the collector's dump format, as
/// `headroom-train simulate --csv` writes it) with `headroom-train`, for
/// `epochs` epochs, versioned `version`, written to `model`.
pub async fn train_from_csv(
    csv: &std::path::Path,
    model: &std::path::Path,
    version: &str,
    epochs: u32,
) -> anyhow::Result<()> {
    let (csv, model, epochs) = (
        csv.display().to_string(),
        model.display().to_string(),
        epochs.to_string(),
    );
    train_model(&[
        "--csv",
        &csv,
        "--out",
        &model,
        "--model-version",
        version,
        "--epochs",
        &epochs,
    ])
    .await
}

/// Asserts that `out` is a failure of the binary `name` told in one line:
/// a non-zero exit, stderr one line starting `NAME: `, no panic, and every
/// string of `want` in it.
pub fn assert_one_line_failure(name: &str, out: &std::process::Output, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit {:?}: {err}", out.status);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(&format!("{name}: ")) && !err.contains("panicked"),
        "{err}"
    );
    for w in want {
        assert!(err.contains(w), "{w:?} in {err}");
    }
}
