//! `headroom-probe` against a real server: 0 for a SERVING service, 1 with
//! the status for a NOT_SERVING one or an unreachable address.

use headroom_serving::grpc::{self, GrpcOptions};
use headroom_testkit as kit;

fn probe(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-probe"))
        .args(args)
        .output()
        .expect("the probe runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reports_health() -> anyhow::Result<()> {
    let (health, service) = tonic_health::server::health_reporter();
    // The whole server's status follows the last report.
    grpc::report_health(&health, "demo.Down", false).await;
    grpc::report_health(&health, "demo.Up", true).await;
    let server = kit::spawn_server(|l, s| async move {
        grpc::serve(
            l,
            tonic::service::Routes::new(service),
            &[],
            &GrpcOptions::default(),
            s,
        )
        .await
    })
    .await?;
    let addr = server.addr.to_string();
    let a = addr.clone();
    let results = tokio::task::spawn_blocking(move || {
        (
            probe(&[&a]),
            probe(&[&a, "demo.Up"]),
            probe(&[&a, "demo.Down"]),
            probe(&["127.0.0.1:9"]),
        )
    })
    .await?;
    assert!(results.0.0, "{}", results.0.1);
    assert!(results.1.0, "{}", results.1.1);
    assert!(
        !results.2.0 && results.2.1.contains("NOT_SERVING"),
        "{}",
        results.2.1
    );
    assert!(
        !results.3.0 && results.3.1.contains("127.0.0.1:9"),
        "{}",
        results.3.1
    );
    server.stop().await
}
