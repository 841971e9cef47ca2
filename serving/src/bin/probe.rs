//! `headroom-probe ADDR [SERVICE]`: asks a server's gRPC health service
//! whether SERVICE (the whole server when absent) is SERVING; exits 0 if
//! so, 1 with a one-line reason otherwise. For container health checks
//! (docker compose), where no grpcurl is installed. `https://HOST:PORT`
//! speaks TLS, trusting `HEADROOM_TLS_CA` (else the system's roots) and
//! presenting `HEADROOM_TLS_CLIENT_CERT`/`HEADROOM_TLS_CLIENT_KEY` when set.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: headroom-probe [https://]HOST:PORT [SERVICE]");
        std::process::exit(2);
    };
    let service = args.next().unwrap_or_default();
    let url = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    let result = async {
        let channel = headroom_serving::tls::ClientTls::from_env()
            .endpoint(&url)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await?
            .into_inner()
            .status();
        serving(status)
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) => {
            eprintln!("headroom-probe: {addr} {service}: {e}");
            std::process::exit(1);
        }
    }
}

fn serving(status: ServingStatus) -> Result<(), Box<dyn std::error::Error>> {
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(status.as_str_name().into())
    }
}
