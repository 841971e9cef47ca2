//! The whole agent in-process against the shared tansu: processes watched
//! by name are measured and their records consumed back from the topic;
//! tasks stamp the samples; the API refuses bad targets by name.

mod common;

use std::time::Duration;

use common::*;
use headroom_agent::{AgentConfig, TargetSpec};
use headroom_proto::v1::{self, agent_client::AgentClient, usage_message::Body};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use prost::Message as _;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};

#[tokio::test]
async fn measured_usage_arrives_on_the_topic_with_the_task() -> anyhow::Result<()> {
    kit::init_logs();
    let (mut burner, d1) = spawn_named("hr-a-burner", BURN_HALF_A_CORE);
    let (mut holder, d2) = spawn_named("hr-a-holder", HOLD_200_MIB);
    // Every sample of the task sees the 200 MiB held.
    wait_ready(&mut holder);
    let topic = kit::fresh_topic("agent", 2).await?;
    let spool = std::env::temp_dir().join(kit::unique_name("agent_spool"));
    let config = AgentConfig {
        host: "test-host".into(),
        interval: Duration::from_secs(1),
        targets: vec![
            TargetSpec::parse("burner=name:hr-a-burner")?,
            TargetSpec::parse("holder=name:hr-a-holder")?,
        ],
        discovery: None,
        task: None,
        publisher: test_publisher(&topic, 2, spool.clone()),
        grpc: GrpcOptions::default(),
    };
    let server = kit::spawn_server(move |l, s| headroom_agent::run(l, s, config)).await?;
    let mut client = AgentClient::new(server.channel().await?);

    // Bad targets are refused with their name; the others keep running.
    let err = client
        .watch(v1::WatchRequest {
            target: Some(v1::Target {
                service: "broken".into(),
                selector: Some(v1::target::Selector::CmdlinePattern("([".into())),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("\"broken\"") && err.message().contains("bad pattern"),
        "{}",
        err.message()
    );
    let err = client
        .start_task(v1::StartTaskRequest {
            id: "t".into(),
            services: vec!["nobody".into()],
            start: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let task = client
        .start_task(v1::StartTaskRequest {
            id: "load-test".into(),
            services: vec!["burner".into(), "holder".into()],
            start: None,
        })
        .await?
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.services, ["burner", "holder"]);

    let consumer: StreamConsumer =
        kit::consumer_config(&kit::unique_name("agent-reader")).create()?;
    consumer.subscribe(&[&topic])?;
    let (mut cpu, mut memory, mut task_event) = (Vec::new(), Vec::new(), false);
    while cpu.len() < 4 || memory.len() < 4 || !task_event {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        match v1::UsageMessage::decode(msg.payload().unwrap_or_default())?.body {
            Some(Body::Usage(u)) if u.task_id == "load-test" => {
                assert_eq!(u.task_start, task.start);
                assert_eq!(
                    u.ts.as_ref().map(|t| t.nanos % 1_000_000_000),
                    Some(0),
                    "aligned to the interval"
                );
                for m in &u.measurements {
                    match (u.service.as_str(), m.resource.as_str()) {
                        ("burner", "cpu") => cpu.push(m.value),
                        ("holder", "memory") => memory.push(m.value),
                        _ => {}
                    }
                }
            }
            Some(Body::Task(e)) => task_event |= e.task.is_some_and(|t| t.id == "load-test"),
            _ => {}
        }
    }
    let status = client.status(v1::StatusRequest {}).await?.into_inner();
    assert_eq!(status.targets.len(), 2);
    assert!(
        status
            .targets
            .iter()
            .all(|t| t.task_id == "load-test" && t.error.is_empty())
    );
    assert!(status.delivered > 0);
    assert_eq!(status.dropped, 0);
    client
        .end_task(v1::EndTaskRequest {
            id: "load-test".into(),
        })
        .await?;

    let _ = (burner.kill(), holder.kill(), burner.wait(), holder.wait());
    let _ = (std::fs::remove_dir_all(d1), std::fs::remove_dir_all(d2));
    server.stop().await?;
    let _ = std::fs::remove_dir_all(spool);

    assert_half_core_and_200_mib(&cpu, &memory);
    Ok(())
}
