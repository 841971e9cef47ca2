//! The shared gRPC stack over real loopback connections: health answers per
//! service, reflection lists services with no .proto at hand, and shutdown
//! closes the listener.

use anyhow::Context;
use headroom_serving::grpc::{self, GrpcOptions};
use tonic::service::Routes;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn start(
    options: GrpcOptions,
) -> anyhow::Result<(
    headroom_testkit::TestServer,
    tonic_health::server::HealthReporter,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            "headroom.v1.Collector",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let server = headroom_testkit::spawn_server(move |listener, shutdown| async move {
        grpc::serve(
            listener,
            Routes::new(health),
            &["headroom.v1.Collector"],
            &options,
            shutdown,
        )
        .await
    })
    .await?;
    Ok((server, reporter))
}

#[tokio::test]
async fn health_reports_status_per_service_and_follows_changes() -> anyhow::Result<()> {
    let (server, reporter) = start(GrpcOptions::default()).await?;
    let mut client = HealthClient::new(server.channel().await?);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_string(),
    };
    let status = client
        .check(check("headroom.v1.Collector"))
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    reporter
        .set_service_status(
            "headroom.v1.Collector",
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    let status = client
        .check(check("headroom.v1.Collector"))
        .await?
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    let unknown = client.check(check("headroom.v1.Nope")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    server.stop().await
}

#[tokio::test]
async fn reflection_lists_only_the_servers_own_services_health_and_reflection() -> anyhow::Result<()>
{
    let (server, _reporter) = start(GrpcOptions::default()).await?;
    let mut client = ServerReflectionClient::new(server.channel().await?);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = responses.message().await?.context("no reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection answer: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    // Exactly this server's own service, health and reflection: not the
    // other Headroom services it does not serve.
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "headroom.v1.Collector",
        ]
    );

    // The descriptor of a headroom service resolves by symbol, as grpcurl
    // `describe` needs.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "headroom.v1.Predictor".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let response = responses.message().await?.context("no reflection answer")?;
    assert!(
        matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "unexpected answer {response:?}"
    );
    server.stop().await
}

#[tokio::test]
async fn server_stops_when_shutdown_is_cancelled() -> anyhow::Result<()> {
    let (server, _reporter) = start(GrpcOptions::default()).await?;
    let addr = server.addr;
    server.stop().await?;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
    Ok(())
}
