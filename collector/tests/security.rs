//! Security of the collector's connections: PostgreSQL TLS through the
//! connection URL, Kafka security settings passed through to librdkafka,
//! and no password ever printed, in errors or logs.

use std::{process::Stdio, time::Duration};

use headroom_testkit::{self as kit, pki::TestPki};

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
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    assert!(ssl, "sslmode=require gave a plaintext session");
    pool.close().await;

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
    let topic = kit::fresh_topic("sec", 1).await?;
    // SASL over TLS towards the plaintext test broker: librdkafka takes the
    // settings (this build has TLS and SCRAM) and fails the handshake.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_headroom-collector"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--brokers",
            &kit::kafka_brokers(),
            "--topic",
            &topic,
            "--kafka-option",
            &format!(
                "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=headroom,sasl.password={KAFKA_SECRET},ssl.ca.location={}",
                pki.ca.display()
            ),
        ])
        .env("HEADROOM_DATABASE_URL", url_with(&db, "sslmode=prefer"))
        .env("HEADROOM_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The broker cannot speak TLS: ingest never starts, and says why.
    let stderr = child.stderr.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut log = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !log.contains("kafka not ready") {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        match tokio::time::timeout_at(deadline, lines.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => log.push_str(&line),
            _ => break,
        }
    }
    child.kill().await?;
    assert!(
        log.contains("kafka not ready") && !log.contains("ingest started"),
        "SASL_SSL against a plaintext broker did not fail:\n{log}"
    );
    assert!(
        !log.contains(KAFKA_SECRET),
        "Kafka password printed:\n{log}"
    );
    assert!(
        !log.contains(PG_SECRET),
        "database password printed:\n{log}"
    );

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
