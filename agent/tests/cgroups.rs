//! The agent against real cgroup v1 controllers on this machine (see
//! DESIGN.md, "Cgroups on the development machines"): an OOM kill in a
//! memory cgroup is published as `oom_kills`; a CPU quota shows as
//! `cpu_throttled` and `cpu_limit` and caps `cpu`; a file's page cache
//! counts in the cgroup's usage but not in its working set. Each test makes
//! its own cgroups (one relative path in every controller, as container
//! runtimes do) and removes them, even when it fails. Where cgroups cannot
//! be made (no v1 controllers, not root, read-only), a test prints
//! `SKIPPED:` with the reason and returns.

mod common;

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{test_publisher, wait_ready, which};
use headroom_agent::{
    AgentConfig, LAYOUT_HEADER, TargetSpec,
    sampling::{Sampler, Selector, cgroup::Layout},
};
use headroom_proto::v1::{self, agent_client::AgentClient, usage_message::Body};
use headroom_serving::grpc::GrpcOptions;
use headroom_testkit as kit;
use prost::Message as _;
use rdkafka::{
    Message,
    consumer::{Consumer, StreamConsumer},
};

const MIB: f64 = 1024.0 * 1024.0;

/// A cgroup at one relative path in the memory, cpu, cpuacct and blkio
/// controllers, with the children started in it. Dropping it kills the
/// children, removes `files` and the cgroup directories.
struct TestCgroup {
    relative: String,
    dirs: Vec<(&'static str, PathBuf)>,
    children: Vec<Child>,
    files: Vec<PathBuf>,
}

impl TestCgroup {
    /// Makes the cgroup, or says why it cannot and returns `None`.
    fn create(name: &str) -> Option<Self> {
        let Layout::V1(mounts) = Layout::host() else {
            eprintln!(
                "SKIPPED: needs cgroup v1 controllers; this host's layout is {}",
                Layout::host().name()
            );
            return None;
        };
        let relative = format!("headroom-test-{}-{name}", std::process::id());
        let mut cgroup = Self {
            relative: relative.clone(),
            dirs: Vec::new(),
            children: Vec::new(),
            files: Vec::new(),
        };
        for (controller, mount) in [
            ("memory", &mounts.memory),
            ("cpu", &mounts.cpu),
            ("cpuacct", &mounts.cpuacct),
            ("blkio", &mounts.blkio),
        ] {
            let Some(mount) = mount else {
                eprintln!("SKIPPED: the {controller} controller is not mounted");
                return None;
            };
            let dir = mount.join(&relative);
            if let Err(e) = std::fs::create_dir(&dir) {
                eprintln!("SKIPPED: cannot create the cgroup {}: {e}", dir.display());
                return None;
            }
            cgroup.dirs.push((controller, dir));
        }
        Some(cgroup)
    }

    fn dir(&self, controller: &str) -> &PathBuf {
        &self.dirs.iter().find(|(c, _)| *c == controller).unwrap().1
    }

    fn write(&self, controller: &str, file: &str, value: &str) {
        let path = self.dir(controller).join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Starts `python3 -c code` inside the cgroup from its first
    /// instruction (the shell joins every controller, then execs), stdin
    /// and stdout piped.
    fn spawn(&mut self, code: &str, env: &[(&str, &str)]) -> &mut Child {
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"for f in "$@"; do echo $$ > "$f" || exit 97; done; exec "$HR_PYTHON" -c "$HR_CODE""#)
            .arg("sh")
            .args(self.dirs.iter().map(|(_, d)| d.join("cgroup.procs")))
            .env("HR_PYTHON", which("python3"))
            .env("HR_CODE", code)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    fn selector(&self) -> Selector {
        Selector::Cgroup(self.relative.clone().into())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        // A killed process leaves its cgroup a moment after wait returns.
        for (_, dir) in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = std::fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("cannot remove the cgroup {}: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Says `ready`, waits for a line on stdin, then touches 200 MiB.
const ALLOCATE_ON_GO: &str = "import sys\nprint('ready', flush=True)\nsys.stdin.readline()\nx = bytearray(200 * 1024 * 1024)\nx[::4096] = b'\\x01' * (len(x) // 4096)\nprint('survived', flush=True)\n";

#[tokio::test]
async fn an_oom_kill_in_a_memory_cgroup_is_published_as_oom_kills() -> anyhow::Result<()> {
    kit::init_logs();
    let Some(mut cgroup) = TestCgroup::create("oom") else {
        return Ok(());
    };
    cgroup.write(
        "memory",
        "memory.limit_in_bytes",
        &(64u64 << 20).to_string(),
    );
    // Where swap is on, the 64 MiB must bound it too.
    let _ = std::fs::write(
        cgroup.dir("memory").join("memory.memsw.limit_in_bytes"),
        (64u64 << 20).to_string(),
    );
    let target = format!("oomer=cgroup:{}", cgroup.relative);
    let child = cgroup.spawn(ALLOCATE_ON_GO, &[]);
    wait_ready(child);

    let topic = kit::fresh_topic("agent_oom", 1).await?;
    let spool = std::env::temp_dir().join(kit::unique_name("agent_oom_spool"));
    let config = AgentConfig {
        host: "oom-host".into(),
        interval: Duration::from_millis(250),
        targets: vec![TargetSpec::parse(&target)?],
        discovery: None,
        task: None,
        publisher: test_publisher(&topic, 1, spool.clone()),
        grpc: GrpcOptions::default(),
    };
    let server = kit::spawn_server(move |l, s| headroom_agent::run(l, s, config)).await?;
    let mut client = AgentClient::new(server.channel().await?);
    let status = client.status(v1::StatusRequest {}).await?;
    assert_eq!(
        status
            .metadata()
            .get(LAYOUT_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("v1"),
        "Status reports the layout"
    );
    assert_eq!(status.get_ref().cgroup_layout, "v1", "and in its body");
    // The counter has a first reading before the kill.
    kit::eventually("the cgroup sampled", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let status = client.status(v1::StatusRequest {}).await.ok()?.into_inner();
            status
                .targets
                .iter()
                .any(|t| !t.last_sample.is_empty())
                .then_some(())
        }
    })
    .await?;
    let child = cgroup.children.last_mut().unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n")?;
    let exit = child.wait()?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exit),
        Some(9),
        "the OOM killer's SIGKILL ended the child ({exit})"
    );

    let consumer: StreamConsumer =
        kit::consumer_config(&kit::unique_name("oom-reader")).create()?;
    consumer.subscribe(&[&topic])?;
    let (mut kills, mut limit) = (0.0, None);
    // Samples keep coming: the kill must show within a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kills < 1.0 {
        let msg = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no oom_kills ≥ 1 published within 30 s"))??;
        if let Some(Body::Usage(u)) =
            v1::UsageMessage::decode(msg.payload().unwrap_or_default())?.body
        {
            assert_eq!(u.service, "oomer");
            assert_eq!(u.instance, "", "a configured target is the host's instance");
            for m in &u.measurements {
                match m.resource.as_str() {
                    "oom_kills" => kills += m.value,
                    "memory_limit" => limit = Some(m.value),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(limit, Some(64.0 * MIB));
    server.stop().await?;
    let _ = std::fs::remove_dir_all(spool);
    Ok(())
}

#[test]
fn a_cpu_quota_shows_as_throttling_and_a_limit() {
    let Some(mut cgroup) = TestCgroup::create("quota") else {
        return;
    };
    cgroup.write("cpu", "cpu.cfs_period_us", "100000");
    cgroup.write("cpu", "cpu.cfs_quota_us", "20000");
    let child = cgroup.spawn("print('ready', flush=True)\nwhile True:\n    pass\n", &[]);
    wait_ready(child);

    let selector = cgroup.selector();
    let mut sampler = Sampler::new();
    let first = sampler.measure("quota", &selector, 0.0).unwrap();
    assert_eq!(
        first.get("cpu_throttled"),
        None,
        "no rate before a second reading"
    );
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let m = sampler
        .measure("quota", &selector, start.elapsed().as_secs_f64())
        .unwrap();
    let (cpu, throttled, limit) = (m.get("cpu"), m.get("cpu_throttled"), m.get("cpu_limit"));
    assert!(
        cpu.is_some_and(|c| c > 0.05 && c <= 0.25),
        "cpu {cpu:?}, want ≤ 0.25"
    );
    assert!(
        throttled.is_some_and(|t| t > 0.0),
        "cpu_throttled {throttled:?}, want > 0"
    );
    assert!(
        limit.is_some_and(|l| (l - 0.2).abs() < 1e-9),
        "cpu_limit {limit:?}, want 0.2"
    );
}

/// Writes a 256 MiB file, reads it back, says `ready` and holds on.
const WRITE_AND_READ_256_MIB: &str = "import os, time\np = os.environ['HR_FILE']\nblock = b'x' * (1 << 20)\nwith open(p, 'wb') as f:\n    for _ in range(256):\n        f.write(block)\n    f.flush()\n    os.fsync(f.fileno())\nwith open(p, 'rb') as f:\n    while f.read(1 << 20):\n        pass\nprint('ready', flush=True)\ntime.sleep(120)\n";

#[test]
fn page_cache_counts_in_usage_but_not_in_the_working_set() {
    let Some(mut cgroup) = TestCgroup::create("cache") else {
        return;
    };
    // Not /tmp: a tmpfs file's pages are shared memory, not file cache.
    let file = PathBuf::from("/var/tmp").join(format!("headroom-cache-{}.bin", std::process::id()));
    cgroup.files.push(file.clone());
    let child = cgroup.spawn(
        WRITE_AND_READ_256_MIB,
        &[("HR_FILE", file.to_str().unwrap())],
    );
    wait_ready(child);

    let m = Sampler::new()
        .measure("cache", &cgroup.selector(), 0.0)
        .unwrap();
    let usage: f64 = std::fs::read_to_string(cgroup.dir("memory").join("memory.usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let working_set = m.get("memory").unwrap();
    assert!(
        usage >= 200.0 * MIB,
        "usage {:.0} MiB: the cache is charged",
        usage / MIB
    );
    assert!(
        working_set < 0.5 * usage,
        "working set {:.0} MiB, usage {:.0} MiB: the cache must not count",
        working_set / MIB,
        usage / MIB
    );
}
