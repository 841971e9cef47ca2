//! TLS on the shared gRPC stack, with certificates from a throwaway CA: a
//! client trusting the CA connects; one trusting another CA, or speaking
//! plaintext, fails; with mutual TLS a client needs a certificate the
//! server's client CA signed. Bad files are one-line errors naming the
//! file, never its contents.

use headroom_serving::{
    grpc::{self, GrpcOptions, ServeError},
    tls::{ClientTls, ServerTls},
};
use headroom_testkit::{self as kit, pki::TestPki};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn tls_server(tls: ServerTls) -> anyhow::Result<kit::TestServer> {
    let (health, service) = tonic_health::server::health_reporter();
    grpc::report_health(&health, "demo.Up", true).await;
    kit::spawn_server(move |l, s| async move {
        let options = GrpcOptions {
            tls,
            ..GrpcOptions::default()
        };
        grpc::serve(l, tonic::service::Routes::new(service), &[], &options, s).await
    })
    .await
}

/// Checks health over `url`; the error's text on failure.
async fn check(url: &str, tls: &ClientTls) -> Result<(), String> {
    let channel = tls
        .endpoint(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "demo.Up".into(),
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn trusting(pki: &TestPki) -> ClientTls {
    ClientTls {
        tls_ca: Some(pki.ca.clone()),
        ..ClientTls::default()
    }
}

fn with_client_cert(pki: &TestPki, ca: &TestPki) -> ClientTls {
    ClientTls {
        tls_ca: Some(ca.ca.clone()),
        tls_client_cert: Some(pki.client_cert.clone()),
        tls_client_key: Some(pki.client_key.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_with_the_right_ca_and_fails_with_another() -> anyhow::Result<()> {
    kit::init_logs();
    let pki = TestPki::new("server")?;
    let stranger = TestPki::new("stranger")?;
    let server = tls_server(ServerTls {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    })
    .await?;
    let https = format!("https://localhost:{}", server.addr.port());
    let https_ip = format!("https://127.0.0.1:{}", server.addr.port());

    check(&https, &trusting(&pki)).await.expect("trusted CA");
    check(&https_ip, &trusting(&pki))
        .await
        .expect("trusted CA, IP name");
    let e = check(&https, &trusting(&stranger)).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
    // The system's roots do not know the test CA either.
    let e = check(&https, &ClientTls::default()).await.unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
    // A plaintext client gets nothing from a TLS server.
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    assert!(check(&plain, &ClientTls::default()).await.is_err());

    // The probe speaks TLS too, configured through the environment.
    let ca = pki.ca.clone();
    let (ok, bad) = tokio::task::spawn_blocking(move || {
        let probe = |ca: &std::path::Path| {
            std::process::Command::new(env!("CARGO_BIN_EXE_headroom-probe"))
                .args([&https, "demo.Up"])
                .env("HEADROOM_TLS_CA", ca)
                .output()
                .expect("the probe runs")
        };
        (probe(&ca), probe(&stranger.ca))
    })
    .await?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!bad.status.success());
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() -> anyhow::Result<()> {
    kit::init_logs();
    let pki = TestPki::new("mtls")?;
    let stranger = TestPki::new("mtls-stranger")?;
    let server = tls_server(ServerTls {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: Some(pki.ca.clone()),
    })
    .await?;
    let url = format!("https://localhost:{}", server.addr.port());
    check(&url, &with_client_cert(&pki, &pki))
        .await
        .expect("client certificate from the client CA");
    assert!(
        check(&url, &trusting(&pki)).await.is_err(),
        "no client certificate"
    );
    assert!(
        check(&url, &with_client_cert(&stranger, &pki))
            .await
            .is_err(),
        "client certificate from another CA"
    );
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_clear_errors_without_their_contents() -> anyhow::Result<()> {
    let pki = TestPki::new("bad")?;
    let serve_with = |tls: ServerTls| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_, service) = tonic_health::server::health_reporter();
        let options = GrpcOptions {
            tls,
            ..GrpcOptions::default()
        };
        grpc::serve(
            listener,
            tonic::service::Routes::new(service),
            &[],
            &options,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap_err()
    };
    let missing = pki.dir.join("missing.pem");
    let e: ServeError = serve_with(ServerTls {
        tls_cert: Some(missing.clone()),
        tls_key: Some(pki.server_key.clone()),
        tls_client_ca: None,
    })
    .await;
    let text = e.to_string();
    assert!(text.contains("cannot read the TLS certificate"), "{text}");
    assert!(text.contains("missing.pem"), "{text}");

    // Certificate and key swapped: the key file holds no private key.
    let e = serve_with(ServerTls {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_cert.clone()),
        tls_client_ca: None,
    })
    .await
    .to_string();
    assert!(e.contains("holds no PEM private key"), "{e}");
    let key = std::fs::read_to_string(&pki.server_key)?;
    let secret_line = key.lines().nth(1).unwrap();
    assert!(!e.contains(secret_line));

    let e = ClientTls {
        tls_ca: Some(pki.server_key.clone()),
        ..ClientTls::default()
    }
    .endpoint("https://localhost:1")
    .unwrap_err()
    .to_string();
    assert!(e.contains("holds no PEM certificate"), "{e}");
    assert!(!e.contains(secret_line), "{e}");
    Ok(())
}
