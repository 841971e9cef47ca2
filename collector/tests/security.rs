//! Security of the collector's connections: PostgreSQL TLS through the
//! connection URL, Kafka security settings passed through to librdkafka,
//! and no password ever printed, in errors or logs.

use std::{process::Stdio, time::Duration};

mod common;

use headroom_testkit::{
    self as kit,
    broker::{Storage, TlsFront},
    pki::TestPki,
};

const PG_SECRET: &str = "hunter2-pg";
const KAFKA_SECRET: &str = "hunter2-kafka";

/// The test database's URL with a password (trust authentication ignores
/// it) and `query`.
fn url_with(db: &kit::TestDb, query: &str) -> String {
    let url = db
        .url
        .replacen("://postgres@", &format!("://postgres:{PG_SECRET}@"), 1);
    assert!(url.contains(PG_SECRET), "unexpected test URL {}", db.url);
    format!("{url}?{query}")
}

/// Runs the collector binary against `brokers` with `kafka_options` until it
/// logs "kafka not ready" (or 60 s pass) and returns its log.
async fn log_until_kafka_fails(
    brokers: &str,
    topic: &str,
    kafka_options: &str,
    database_url: &str,
) -> anyhow::Result<String> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--brokers",
            brokers,
            "--topic",
            topic,
        ])
        .args(["--kafka-option", kafka_options])
        .env("HEADROOM_DATABASE_URL", database_url)
        .env("HEADROOM_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut log = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !log.contains("kafka not ready") {
        let mut line = String::new();
        match tokio::time::timeout_at(deadline, lines.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => log.push_str(&line),
            _ => break,
        }
    }
    child.kill().await?;
    Ok(log)
}

fn collector(args: &[&str], database_url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
        .args(args)
        .env("HEADROOM_DATABASE_URL", database_url)
        .env("HEADROOM_LOG", "debug")
        .output()
        .expect("the collector runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_is_set_by_the_url_and_the_password_never_shows() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let pki = TestPki::new("pg")?;

    // sslmode=require: the session is encrypted.
    let url = url_with(&db, "sslmode=require");
    assert!(
        kit::TestDb::session_uses_tls(&url).await?,
        "sslmode=require gave a plaintext session"
    );

    let (u, pki_ca) = (url.clone(), pki.ca.clone());
    let verify_url = url_with(
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", pki_ca.display()),
    );
    let (ok, refused) = tokio::task::spawn_blocking(move || {
        (
            collector(&["admin", "migrate"], &u),
            // The server's certificate is not signed by this CA.
            collector(&["admin", "migrate"], &verify_url),
        )
    })
    .await?;
    let ok_err = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{ok_err}");
    assert!(ok_err.contains("schema up to date"), "{ok_err}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "an untrusted server was accepted"
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"),
        "{err}"
    );
    for out in [&ok_err, &err] {
        assert!(!out.contains(PG_SECRET), "password printed: {out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_security_settings_reach_librdkafka_and_secrets_stay_out_of_logs()
-> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let pki = TestPki::new("kafka")?;
    let topic = kit::unique_name("sec");
    // A broker that requires SCRAM-SHA-512, behind TLS.
    let (_broker, front) = kit::broker::sasl_ssl_broker(&pki, "headroom", KAFKA_SECRET)?;
    let sasl = |password: &str| kit::broker::sasl_ssl_options("headroom", password, &pki.ca);

    // The right password: records produced and stored over SASL_SSL.
    stored_through(
        &db,
        &front.address(),
        &topic,
        sasl(KAFKA_SECRET),
        "t-sasl",
        100,
    )
    .await?;

    // A wrong password: refused, ingest never starts, and neither password
    // nor the database's shows in the log.
    let wrong = format!("{KAFKA_SECRET}-wrong");
    let log = log_until_kafka_fails(
        &front.address(),
        &topic,
        &sasl(&wrong).join(","),
        &url_with(&db, "sslmode=prefer"),
    )
    .await?;
    assert!(
        log.contains("kafka not ready") && !log.contains("ingest started"),
        "a wrong SASL password was accepted:\n{log}"
    );
    for secret in [KAFKA_SECRET, PG_SECRET] {
        assert!(!log.contains(secret), "a password was printed:\n{log}");
    }

    // A setting librdkafka refuses stops the collector with a one-line
    // reason naming the key.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--topic",
                &topic,
                "--kafka-option",
                &format!("security.protocol=telepathy,sasl.password={KAFKA_SECRET}"),
            ])
            .env("HEADROOM_DATABASE_URL", url_with(&db, "sslmode=prefer"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the collector kept running with a refused Kafka setting"))??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad Kafka setting was accepted");
    assert!(err.contains("security.protocol"), "{err}");
    assert!(!err.contains(KAFKA_SECRET), "{err}");
    Ok(())
}

/// Runs a collector in-process with `kafka_options` towards `brokers`,
/// produces `n` records of `task` with the same settings, and waits until
/// exactly those are stored.
async fn stored_through(
    db: &kit::TestDb,
    brokers: &str,
    topic: &str,
    kafka_options: Vec<String>,
    task: &str,
    n: i64,
) -> anyhow::Result<()> {
    let mut producer = kit::producer_config();
    producer.set("bootstrap.servers", brokers);
    kit::broker::apply_options(&mut producer, &kafka_options);
    let mut options = common::ingest_options(topic);
    options.brokers = brokers.to_string();
    options.kafka_options = kafka_options;
    let server = common::start(&db.url, options).await?;
    let records: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let payload = common::usage(task, "api", common::T0 + i * 1000, &[("cpu", 1.0)]);
            ("api".to_string(), payload)
        })
        .collect();
    common::produce_with(producer, topic, &records, None).await?;
    common::wait_for_rows(&db.pool, task, n, Duration::from_secs(60)).await?;
    server.stop().await
}

/// librdkafka settings for SSL trusting `ca`, with a client certificate
/// when given.
fn ssl_options(ca: &TestPki, client: Option<&TestPki>) -> Vec<String> {
    let mut options = vec![
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={}", ca.ca.display()),
    ];
    if let Some(client) = client {
        options.push(format!(
            "ssl.certificate.location={}",
            client.client_cert.display()
        ));
        options.push(format!("ssl.key.location={}", client.client_key.display()));
    }
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_mutual_tls_is_stored_and_untrusted_peers_are_refused() -> anyhow::Result<()> {
    kit::init_logs();
    let db = kit::TestDb::new().await?;
    let pki = TestPki::new("kafka-tls")?;
    let foreign = TestPki::new("kafka-foreign")?;
    // A real TLS listener (mutual: client certificates from `pki` only)
    // before a private broker that advertises the TLS port.
    let tls_port = kit::broker::free_port()?;
    let broker = kit::PrivateBroker::start_with(Storage::Memory, Some(tls_port))?;
    let front = TlsFront::start(tls_port, &broker.address(), &pki, true)?;
    let topic = kit::unique_name("tls");

    // Trusting the CA and presenting a client certificate: the collector
    // creates its topics, consumes and stores over TLS.
    stored_through(
        &db,
        &front.address(),
        &topic,
        ssl_options(&pki, Some(&pki)),
        "t-tls",
        200,
    )
    .await?;
    assert_eq!(
        front.failed_handshakes(),
        0,
        "trusted peers failed a handshake"
    );

    // A broker certificate from a CA the collector does not trust, and a
    // client without a certificate: both are refused, and say so.
    let url = url_with(&db, "sslmode=prefer");
    for (case, options) in [
        ("untrusted broker", ssl_options(&foreign, Some(&pki))),
        ("no client certificate", ssl_options(&pki, None)),
    ] {
        let failed_before = front.failed_handshakes();
        let log = log_until_kafka_fails(&front.address(), &topic, &options.join(","), &url).await?;
        assert!(
            front.failed_handshakes() > failed_before,
            "{case}: no TLS handshake failed"
        );
        assert!(
            log.contains("kafka not ready") && !log.contains("ingest started"),
            "{case}: TLS was not refused:\n{log}"
        );
    }
    Ok(())
}

#[test]
fn help_never_prints_secrets_taken_from_the_environment() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["admin", "dump", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
            .args(args)
            .env(
                "HEADROOM_DATABASE_URL",
                "postgres://alice:hunter2pw@127.0.0.1:5432/x",
            )
            .env("HEADROOM_KAFKA_OPTIONS", "sasl.password=hunter2kafka")
            .output()
            .expect("the collector binary runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("HEADROOM_DATABASE_URL"), "{args:?}: {text}");
        assert!(
            !text.contains("hunter2"),
            "{args:?} printed a secret from the environment: {text}"
        );
    }
}
