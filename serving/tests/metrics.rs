//! `--metrics-listen` serves the process's metrics in the Prometheus text
//! format, and a taken address is a clear error.

use std::io::{Read, Write};

use headroom_serving::metrics::{MetricsOptions, install};

fn get(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_prometheus_format() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = install(&MetricsOptions {
        metrics_listen: Some(taken.local_addr().unwrap()),
    })
    .unwrap_err();
    assert!(e.to_string().contains("cannot serve metrics on"), "{e}");

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    install(&MetricsOptions {
        metrics_listen: Some(addr),
    })
    .unwrap();
    metrics::counter!("headroom_test_events_total").increment(3);
    let mut body = String::new();
    for _ in 0..50 {
        body = tokio::task::spawn_blocking(move || get(addr))
            .await
            .unwrap();
        if body.contains("headroom_test_events_total 3") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        body.contains("# TYPE headroom_test_events_total counter"),
        "{body}"
    );
    assert!(body.contains("headroom_test_events_total 3"), "{body}");
}
