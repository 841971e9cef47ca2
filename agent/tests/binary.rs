//! The `headroom-agent` binary as operators run it: configured by a TOML
//! file (overridden by flags), discovering a container under a cgroup root,
//! starting a task at launch, and stopped with SIGTERM while the broker is
//! unreachable: every sample taken before the signal is delivered by the
//! next run, in order, once.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use headroom_proto::{
    time::to_unix_ms,
    v1::{self, agent_client::AgentClient, usage_message::Body},
};
use headroom_testkit as kit;
use prost::Message as _;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};

const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
const CONTAINER: &str = "docker-4f1c2b3a9d8e";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent binary, killed if the test fails before terminating it,
/// and its log lines.
struct Agent(Option<Child>, tokio::sync::mpsc::UnboundedReceiver<String>);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_agent(config: &Path, port: u16, extra: &[&str]) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_headroom-agent"))
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env_remove("HEADROOM_KAFKA_BROKERS")
        .env("HEADROOM_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let stderr = child.stderr.take().expect("stderr piped");
    let (lines, logs) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = lines.send(line);
        }
    });
    Agent(Some(child), logs)
}

/// Waits for the agent to log a line containing `message`.
async fn logged(agent: &mut Agent, message: &str) -> anyhow::Result<()> {
    let wait = async {
        while let Some(line) = agent.1.recv().await {
            if line.contains(message) {
                return Ok(());
            }
        }
        anyhow::bail!("the agent exited without logging {message:?}")
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| anyhow::anyhow!("no {message:?} logged within 30 s"))?
}

async fn connect(port: u16) -> anyhow::Result<AgentClient<tonic::transport::Channel>> {
    kit::eventually("agent listening", Duration::from_secs(30), || async move {
        AgentClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await
}

/// Sends SIGTERM and waits for a clean exit.
fn terminate(mut agent: Agent) -> anyhow::Result<()> {
    let child = agent.0.as_mut().expect("running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill failed");
    for _ in 0..300 {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "agent exited with {status}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("agent did not stop within 30 s of SIGTERM")
}

/// The last sample time of every target, from Status.
async fn last_samples(
    client: &mut AgentClient<tonic::transport::Channel>,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let status = client.status(v1::StatusRequest {}).await?.into_inner();
    Ok(status
        .targets
        .iter()
        .filter_map(|t| {
            Some((
                t.target.as_ref()?.service.clone(),
                to_unix_ms(t.last_sample_at.as_ref()?),
            ))
        })
        .collect())
}

#[tokio::test]
async fn sigterm_loses_nothing_and_discovered_containers_are_sampled() -> anyhow::Result<()> {
    kit::init_logs();
    let work = std::env::temp_dir().join(kit::unique_name("agent_binary"));
    let container = work.join(format!("cgroup/system.slice/docker-{ID}.scope"));
    std::fs::create_dir_all(&container)?;
    std::fs::write(container.join("cpu.stat"), "usage_usec 1000\n")?;
    std::fs::write(container.join("memory.current"), "1048576\n")?;
    let mut sleeper = Command::new("sleep").arg("300").spawn()?;
    let topic = kit::fresh_topic("agent_binary", 2).await?;
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
host = "run1"
interval = "250ms"

[kafka]
brokers = "127.0.0.1:1"
topic = "{topic}"
delivery_timeout = "1s"

[spool]
dir = "{spool}"

[discovery]
root = "{root}"
every = "250ms"

[task]
id = "boot"
services = ["sleeper"]

[[targets]]
service = "sleeper"
pid = {pid}
"#,
            spool = work.join("spool").display(),
            root = work.join("cgroup").display(),
            pid = sleeper.id(),
        ),
    )?;

    // Run 1: the broker is unreachable; everything waits in the agent.
    let port = free_port();
    let mut agent = start_agent(&config, port, &[]);
    let mut client = connect(port).await?;
    let discovered = kit::eventually(
        "the container discovered and sampled",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                let status = client.status(v1::StatusRequest {}).await.ok()?.into_inner();
                status.targets.into_iter().find(|t| {
                    t.target.as_ref().is_some_and(|t| t.service == CONTAINER)
                        && !t.last_sample.is_empty()
                })
            }
        },
    )
    .await?;
    assert_eq!(discovered.source, v1::TargetSource::Discovered as i32);
    assert!(
        discovered
            .last_sample
            .iter()
            .any(|m| m.resource == "memory" && m.value == 1_048_576.0),
        "{discovered:?}"
    );
    // Delivery was tried and failed: what follows is held, not unsent.
    logged(&mut agent, "broker unreachable").await?;
    // Eight ticks of the sleeper at least, the run's samples to deliver.
    let first = kit::eventually("the sleeper sampled", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            last_samples(&mut client)
                .await
                .ok()?
                .get("sleeper")
                .copied()
        }
    })
    .await?;
    kit::eventually("eight samples", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let last = *last_samples(&mut client).await.ok()?.get("sleeper")?;
            (last - first >= 7 * 250).then_some(())
        }
    })
    .await?;
    let status = client.status(v1::StatusRequest {}).await?.into_inner();
    assert_eq!(status.broker, v1::BrokerState::Down as i32);
    assert_eq!(status.tasks.len(), 1, "the task given at start runs");
    let before_term = last_samples(&mut client).await?;
    drop(client);
    terminate(agent)?;
    assert!(
        std::fs::read_dir(work.join("spool"))?.next().is_some(),
        "the samples were spooled at shutdown"
    );

    // Run 2: a flag overrides the file's broker; the spool is delivered
    // first. The container goes away and discovery lets it go.
    let port = free_port();
    let agent = start_agent(
        &config,
        port,
        &["--brokers", &kit::kafka_brokers(), "--host", "run2"],
    );
    let client = connect(port).await?;
    std::fs::remove_dir_all(&container)?;
    kit::eventually(
        "the vanished container dropped",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                let names = last_samples(&mut client).await.ok()?;
                (!names.contains_key(CONTAINER)).then_some(())
            }
        },
    )
    .await?;

    let consumer: StreamConsumer = kit::consumer_config(&kit::unique_name("reader")).create()?;
    consumer.subscribe(&[topic.as_str()])?;
    // Run 1's samples per service: (sequence, time, task id).
    let mut run1: BTreeMap<String, Vec<(u64, i64, String)>> = BTreeMap::new();
    let mut boot_event = false;
    let complete = |run1: &BTreeMap<String, Vec<(u64, i64, String)>>| {
        before_term.iter().all(|(service, last)| {
            run1.get(service)
                .and_then(|s| s.last())
                .is_some_and(|(_, ts, _)| ts >= last)
        })
    };
    while !(boot_event && complete(&run1)) {
        let msg = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        match v1::UsageMessage::decode(msg.payload().unwrap_or_default())?.body {
            Some(Body::Usage(u)) if u.host == "run1" => {
                let ts = to_unix_ms(u.ts.as_ref().unwrap());
                run1.entry(u.service)
                    .or_default()
                    .push((u.sequence, ts, u.task_id));
            }
            Some(Body::Task(t)) if t.task.as_ref().is_some_and(|t| t.id == "boot") => {
                boot_event = true;
            }
            _ => {}
        }
    }
    for (service, samples) in &run1 {
        let sequences: Vec<u64> = samples.iter().map(|s| s.0).collect();
        let want: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, want, "{service}: gaps, repeats or disorder");
    }
    assert!(run1["sleeper"].len() >= 8, "{:?}", run1["sleeper"]);
    assert!(run1["sleeper"].iter().all(|s| s.2 == "boot"));
    assert!(run1[CONTAINER].iter().all(|s| s.2 != "boot"));
    drop(client);
    terminate(agent)?;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[tokio::test]
async fn two_replicas_on_one_host_are_published_as_two_instances() -> anyhow::Result<()> {
    kit::init_logs();
    let work = std::env::temp_dir().join(kit::unique_name("agent_replicas"));
    // Two replicas of billing, laid out as a runtime's cgroups: 100 and
    // 600 MiB of working set.
    for (replica, mib) in [(1u64, 100u64), (2, 600)] {
        let dir = work.join(format!("cgroup/apps/billing-{replica}.scope"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1000\n")?;
        std::fs::write(dir.join("memory.current"), format!("{}\n", mib << 20))?;
    }
    let topic = kit::fresh_topic("agent_replicas", 2).await?;
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
host = "node-1"
interval = "250ms"

[kafka]
brokers = "{brokers}"
topic = "{topic}"

[spool]
dir = "{spool}"

[discovery]
root = "{root}"
every = "250ms"
"#,
            brokers = kit::kafka_brokers(),
            spool = work.join("spool").display(),
            root = work.join("cgroup").display(),
        ),
    )?;
    let port = free_port();
    let agent = start_agent(
        &config,
        port,
        &[
            "--discovery-pattern",
            r"^apps/(?P<service>[a-z]+)-(?P<instance>\d+)\.scope$",
        ],
    );
    let mut client = connect(port).await?;

    let consumer: StreamConsumer = kit::consumer_config(&kit::unique_name("reader")).create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let mut memory: BTreeMap<String, f64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while memory.len() < 2 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("two instances not published within 30 s: {memory:?}")
            })??;
        if let Some(Body::Usage(u)) =
            v1::UsageMessage::decode(msg.payload().unwrap_or_default())?.body
        {
            assert_eq!(u.service, "billing");
            assert_eq!(msg.key(), Some(&b"billing"[..]), "keyed by service");
            if let Some(m) = u.measurements.iter().find(|m| m.resource == "memory") {
                memory.insert(u.instance, m.value);
            }
        }
    }
    assert_eq!(
        memory,
        BTreeMap::from([
            ("1".to_string(), 100.0 * 1048576.0),
            ("2".to_string(), 600.0 * 1048576.0)
        ])
    );
    let status = client.status(v1::StatusRequest {}).await?.into_inner();
    let mut listed: Vec<String> = status
        .targets
        .iter()
        .filter_map(|t| match t.target.as_ref()?.selector.as_ref()? {
            v1::target::Selector::CgroupPath(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        ["billing-1.scope", "billing-2.scope"].map(|d| work
            .join("cgroup/apps")
            .join(d)
            .display()
            .to_string()),
        "Status lists each instance"
    );
    drop(client);
    terminate(agent)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
