//! cgroup accounting of one container on either hierarchy — cgroup v2 (one
//! unified tree) and cgroup v1 (one tree per controller) — and the host's
//! layout, detected once from its mounts. Read: CPU time, memory as the
//! working set, block IO, pressure (OOM kills, CPU throttling), the limits
//! in force, and network counters of the container's network namespace
//! (`/proc/<pid>/net/dev` of a member).
//!
//! Files, as the kernel documents them (`Documentation/admin-guide/cgroup-v2.rst`
//! and `Documentation/admin-guide/cgroup-v1/{memory,cpuacct,blkio-controller}.rst`,
//! `scheduler/sched-bwc.rst`):
//!
//! | what | v2 | v1 |
//! |---|---|---|
//! | CPU time | `cpu.stat` `usage_usec` | `cpuacct.usage` (ns) |
//! | memory usage | `memory.current` | `memory.usage_in_bytes` |
//! | inactive file cache | `memory.stat` `inactive_file` | `memory.stat` `total_inactive_file` |
//! | block IO | `io.stat` `rbytes`/`wbytes` | `blkio.throttle.io_service_bytes` (or `blkio.io_service_bytes`, `blkio.bfq.io_service_bytes`) `Read`/`Write` |
//! | OOM kills | `memory.events` `oom_kill` | `memory.oom_control` `oom_kill` |
//! | CPU throttled | `cpu.stat` `throttled_usec` | `cpu.stat` `throttled_time` (ns) |
//! | memory limit | `memory.max` | `memory.limit_in_bytes` |
//! | CPU limit | `cpu.max` (`quota period`) | `cpu.cfs_quota_us` / `cpu.cfs_period_us` |
//!
//! Memory is the working set, usage minus inactive file cache, floored at
//! 0, as the kubelet and cAdvisor count it (cAdvisor
//! `container/libcontainer/handler.go` `setMemoryStats`): page cache the
//! kernel can drop at once is not what a service needs.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Memory limits at or above this are "unlimited": cgroup v1 writes an
/// unset limit as the largest page-aligned `i64` (9223372036854771712).
pub const UNLIMITED_BYTES: u64 = 1 << 62;

/// The cgroup hierarchy of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy (cgroup v2), mounted at `root`.
    V2 {
        /// Mount point of the `cgroup2` file system.
        root: PathBuf,
    },
    /// One hierarchy per controller (cgroup v1; also hybrid hosts, whose
    /// unified tree holds no controller). A container's cgroup has the
    /// same path relative to each controller's mount.
    V1(V1Mounts),
    /// No cgroup file system is mounted: only directories given by their
    /// full path can be read.
    Unmounted,
}

/// Where each cgroup v1 controller the agent reads is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V1Mounts {
    /// `cpu` (throttling and quota).
    pub cpu: Option<PathBuf>,
    /// `cpuacct` (CPU time).
    pub cpuacct: Option<PathBuf>,
    /// `memory`.
    pub memory: Option<PathBuf>,
    /// `blkio`.
    pub blkio: Option<PathBuf>,
}

impl V1Mounts {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.memory, &self.cpuacct, &self.cpu, &self.blkio]
            .into_iter()
            .flatten()
    }
}

/// The directories one cgroup's files live in, per controller (all the
/// same directory on cgroup v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDirs {
    /// Holds `cpu.stat`, `cpu.max` / `cpu.cfs_*`.
    pub cpu: PathBuf,
    /// Holds `cpuacct.usage` (v1; the cpu directory on v2).
    pub cpuacct: PathBuf,
    /// Holds `memory.*`.
    pub memory: PathBuf,
    /// Holds `io.stat` / `blkio.*`.
    pub blkio: PathBuf,
}

impl CgroupDirs {
    /// Every controller's files in one directory (cgroup v2, or a tree laid
    /// out like one).
    pub fn single(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            cpu: dir.clone(),
            cpuacct: dir.clone(),
            memory: dir.clone(),
            blkio: dir,
        }
    }
}

impl Layout {
    /// The host's layout, detected from `/proc/self/mounts` at the first
    /// call and kept for the life of the process.
    pub fn host() -> &'static Layout {
        static HOST: OnceLock<Layout> = OnceLock::new();
        HOST.get_or_init(|| {
            std::fs::read_to_string("/proc/self/mounts")
                .map(|m| Self::from_mounts(&m))
                .unwrap_or(Layout::Unmounted)
        })
    }

    /// The layout `mounts` (the text of `/proc/mounts`) describe: v1 when
    /// any of the cpu, cpuacct, memory or blkio controllers is mounted as
    /// cgroup v1 (a hybrid host's unified tree then holds none of them),
    /// else v2 where a `cgroup2` file system is mounted.
    pub fn from_mounts(mounts: &str) -> Self {
        let mut v1 = V1Mounts::default();
        let mut v2 = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, point, fstype, options, ..] = fields[..] else {
                continue;
            };
            match fstype {
                "cgroup2" => {
                    v2.get_or_insert_with(|| PathBuf::from(point));
                }
                "cgroup" => {
                    for option in options.split(',') {
                        let slot = match option {
                            "cpu" => &mut v1.cpu,
                            "cpuacct" => &mut v1.cpuacct,
                            "memory" => &mut v1.memory,
                            "blkio" => &mut v1.blkio,
                            _ => continue,
                        };
                        slot.get_or_insert_with(|| PathBuf::from(point));
                    }
                }
                _ => {}
            }
        }
        match v2 {
            _ if v1.all().next().is_some() => Layout::V1(v1),
            Some(root) => Layout::V2 { root },
            None => Layout::Unmounted,
        }
    }

    /// `"v1"`, `"v2"` or `"none"`, as logs and `Status` say it.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::V1(_) => "v1",
            Layout::Unmounted => "none",
        }
    }

    /// Where cgroup paths are relative to: the v2 mount, or the directory
    /// holding the v1 controllers' mounts (`/sys/fs/cgroup`).
    fn base(&self) -> PathBuf {
        match self {
            Layout::V2 { root } => root.clone(),
            Layout::V1(m) => m
                .all()
                .next()
                .and_then(|p| p.parent())
                .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), Path::to_path_buf),
            Layout::Unmounted => PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// The directories of the cgroup at `path`: a path relative to the
    /// cgroup root (`system.slice/x.scope`), or a full one — under a v1
    /// controller's mount (`/sys/fs/cgroup/memory/docker/<id>`, found the
    /// same in every controller), under the cgroup root, or anywhere else
    /// (a directory laid out like a v2 cgroup, read as it is).
    pub fn resolve(&self, path: &Path) -> CgroupDirs {
        let base = self.base();
        let (relative, full) = if path.is_relative() {
            (Some(path.to_path_buf()), base.join(path))
        } else {
            // `/sys/fs/cgroup/cpu` is often a link to `cpu,cpuacct`.
            let full = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            let relative = match self {
                Layout::V1(m) => m
                    .all()
                    .find_map(|mount| full.strip_prefix(mount).ok())
                    .or_else(|| full.strip_prefix(&base).ok())
                    .map(Path::to_path_buf),
                _ => None,
            };
            (relative, full)
        };
        match (self, relative) {
            (Layout::V1(m), Some(relative)) => {
                let at = |mount: &Option<PathBuf>| {
                    mount
                        .as_ref()
                        .map_or_else(|| full.clone(), |m| m.join(&relative))
                };
                CgroupDirs {
                    cpu: at(&m.cpu),
                    cpuacct: at(&m.cpuacct),
                    memory: at(&m.memory),
                    blkio: at(&m.blkio),
                }
            }
            _ => CgroupDirs::single(full),
        }
    }

    /// The tree container discovery walks for `configured`: on v1 the
    /// cgroup root holds one tree per controller, and each container would
    /// be found in each, so the memory controller's tree is walked instead
    /// (its paths resolve to the other controllers' directories).
    pub fn discovery_root(&self, configured: &Path) -> PathBuf {
        match self {
            Layout::V1(m) if configured == self.base() => m
                .memory
                .clone()
                .or_else(|| m.cpuacct.clone())
                .unwrap_or_else(|| configured.to_path_buf()),
            _ => configured.to_path_buf(),
        }
    }
}

/// Counters and gauges read from one cgroup at one moment. A file the
/// cgroup does not have (a controller not enabled, an unlimited limit)
/// leaves its field empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupReading {
    /// CPU time used, in nanoseconds.
    pub cpu_ns: u64,
    /// The working set in bytes: usage minus inactive file cache, floored
    /// at 0 (what the kubelet and cAdvisor count).
    pub memory_bytes: Option<u64>,
    /// Memory usage including all page cache (`memory.current`,
    /// `memory.usage_in_bytes`), in bytes: what the working set is taken from.
    pub memory_usage_bytes: Option<u64>,
    /// Bytes read from block devices.
    pub read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub write_bytes: Option<u64>,
    /// Bytes received on the namespace's interfaces other than loopback,
    /// when the cgroup has its own network namespace.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent, likewise.
    pub net_tx_bytes: Option<u64>,
    /// Processes the kernel's OOM killer killed in this cgroup since it
    /// was created (a counter).
    pub oom_kills: Option<u64>,
    /// Time the cgroup's tasks were held back by the CPU quota, in
    /// nanoseconds (a counter).
    pub throttled_ns: Option<u64>,
    /// The memory limit in bytes; empty when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// The CPU quota in cores (quota / period); empty when unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// Processes in the cgroup (and its descendants' `cgroup.procs` are not
    /// counted: a container's own cgroup holds its processes).
    pub pids: Vec<u32>,
}

/// Why a cgroup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The directory is missing or unreadable.
    #[error("cgroup {path}: {source}")]
    Unreadable {
        /// The cgroup directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file did not have the expected format.
    #[error("cgroup {path}: malformed {file}")]
    Malformed {
        /// The cgroup directory.
        path: PathBuf,
        /// The file.
        file: &'static str,
    },
}

/// `usage_usec` from a v2 `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> Option<u64> {
    parse_keyed(text, "usage_usec")
}

/// The value of `key` in a flat keyed file (`key value` lines: `cpu.stat`,
/// `memory.stat`, `memory.events`, `memory.oom_control`).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sum of `rbytes` and `wbytes` over every device of a v2 `io.stat`.
pub fn parse_io_stat(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read = read.saturating_add(v.parse().unwrap_or(0));
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            written = written.saturating_add(v.parse().unwrap_or(0));
        }
    }
    (read, written)
}

/// Sum of the `Read` and `Write` bytes over every device of a v1
/// `blkio.*io_service_bytes` file (`8:0 Read 4096` lines, then `Total`).
pub fn parse_blkio(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(op), Some(value)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => written = written.saturating_add(value),
            _ => {}
        }
    }
    (read, written)
}

/// A memory limit (`memory.max`, `memory.limit_in_bytes`) in bytes; `None`
/// for `max` and for v1's "unlimited" (any value from 2^62 up).
pub fn parse_memory_limit(text: &str) -> Option<u64> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&v| v < UNLIMITED_BYTES)
}

/// A v2 `cpu.max` (`quota period`, in microseconds) as cores; `None` for
/// `max` (no quota).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// A v1 quota (`cpu.cfs_quota_us`, -1 when unset) over its period
/// (`cpu.cfs_period_us`) as cores; `None` without a quota.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Usage minus inactive file cache, floored at 0.
pub fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

/// Received and sent bytes over every interface but loopback, from the
/// text of `/proc/<pid>/net/dev`.
pub fn parse_net_dev(text: &str) -> Option<(u64, u64)> {
    let mut totals = (0u64, 0u64);
    let mut any = false;
    for line in text.lines().skip(2) {
        let (name, rest) = line.split_once(':')?;
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() < 9 {
            return None;
        }
        totals.0 = totals.0.saturating_add(fields[0]);
        totals.1 = totals.1.saturating_add(fields[8]);
        any = true;
    }
    any.then_some(totals)
}

fn read_file(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// CPU time in ns: v2 `cpu.stat`, else v1 `cpuacct.usage`.
fn read_cpu(dirs: &CgroupDirs) -> Result<u64, CgroupError> {
    let v2 = std::fs::read_to_string(dirs.cpu.join("cpu.stat"));
    if let Some(usec) = v2.as_deref().ok().and_then(parse_cpu_stat) {
        return Ok(usec.saturating_mul(1000));
    }
    match std::fs::read_to_string(dirs.cpuacct.join("cpuacct.usage")) {
        Ok(text) => text.trim().parse().map_err(|_| CgroupError::Malformed {
            path: dirs.cpuacct.clone(),
            file: "cpuacct.usage",
        }),
        // A v2 cgroup whose cpu.stat lacks usage_usec.
        Err(_) if v2.is_ok() => Err(CgroupError::Malformed {
            path: dirs.cpu.clone(),
            file: "cpu.stat",
        }),
        Err(source) => Err(CgroupError::Unreadable {
            path: dirs.cpuacct.clone(),
            source,
        }),
    }
}

/// Whether the cgroup can be sampled: its CPU time is readable.
pub fn check(dirs: &CgroupDirs) -> Result<(), CgroupError> {
    read_cpu(dirs).map(|_| ())
}

/// (working set, usage): v2 `memory.current` less `inactive_file`, else v1
/// `memory.usage_in_bytes` less `total_inactive_file`.
fn read_memory(dir: &Path) -> (Option<u64>, Option<u64>) {
    let stat = read_file(dir, "memory.stat");
    let parse = |t: String| t.trim().parse::<u64>().ok();
    let (usage, inactive) = if let Some(usage) = read_file(dir, "memory.current").and_then(parse) {
        let inactive = stat
            .as_deref()
            .and_then(|s| parse_keyed(s, "inactive_file"));
        (Some(usage), inactive)
    } else {
        let usage = read_file(dir, "memory.usage_in_bytes").and_then(parse);
        let inactive = stat
            .as_deref()
            .and_then(|s| parse_keyed(s, "total_inactive_file"));
        (usage, inactive)
    };
    (usage.map(|u| working_set(u, inactive)), usage)
}

/// (read, written) bytes: v2 `io.stat`, else the first v1 blkio file that
/// counted anything (the throttle file counts every device; the
/// scheduler's files only devices it schedules).
fn read_io(dir: &Path) -> Option<(u64, u64)> {
    if let Some(text) = read_file(dir, "io.stat") {
        return Some(parse_io_stat(&text));
    }
    let mut seen = None;
    for file in [
        "blkio.throttle.io_service_bytes",
        "blkio.io_service_bytes",
        "blkio.bfq.io_service_bytes",
    ] {
        if let Some(text) = read_file(dir, file) {
            let counted = parse_blkio(&text);
            if counted != (0, 0) {
                return Some(counted);
            }
            seen = Some(counted);
        }
    }
    seen
}

/// Reads one cgroup. Network counters are reported only when the cgroup's
/// first process lives in another network namespace than `own_netns` (the
/// agent's), since otherwise they would be the host's. Only CPU time is
/// required; everything else is read where the cgroup has it.
pub fn read(dirs: &CgroupDirs, own_netns: Option<&str>) -> Result<CgroupReading, CgroupError> {
    let cpu_ns = read_cpu(dirs)?;
    let (memory_bytes, memory_usage_bytes) = read_memory(&dirs.memory);
    let (read_bytes, write_bytes) = read_io(&dirs.blkio).unzip();
    let oom_kills = read_file(&dirs.memory, "memory.events")
        .or_else(|| read_file(&dirs.memory, "memory.oom_control"))
        .and_then(|t| parse_keyed(&t, "oom_kill"));
    let throttled_ns = read_file(&dirs.cpu, "cpu.stat").and_then(|t| {
        parse_keyed(&t, "throttled_usec")
            .map(|usec| usec.saturating_mul(1000))
            .or_else(|| parse_keyed(&t, "throttled_time"))
    });
    let memory_limit_bytes = read_file(&dirs.memory, "memory.max")
        .or_else(|| read_file(&dirs.memory, "memory.limit_in_bytes"))
        .and_then(|t| parse_memory_limit(&t));
    let cpu_limit_cores = match read_file(&dirs.cpu, "cpu.max") {
        Some(text) => parse_cpu_max(&text),
        None => read_file(&dirs.cpu, "cpu.cfs_quota_us")
            .zip(read_file(&dirs.cpu, "cpu.cfs_period_us"))
            .and_then(|(q, p)| parse_cfs_quota(&q, &p)),
    };
    let pids: Vec<u32> = [&dirs.memory, &dirs.cpuacct, &dirs.cpu]
        .into_iter()
        .find_map(|d| read_file(d, "cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    let (mut net_rx_bytes, mut net_tx_bytes) = (None, None);
    if let Some(pid) = pids.first() {
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let other_namespace = netns.is_some() && netns.as_deref() != own_netns;
        let counters = other_namespace
            .then(|| std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
            .flatten()
            .and_then(|t| parse_net_dev(&t));
        if let Some((rx, tx)) = counters {
            net_rx_bytes = Some(rx);
            net_tx_bytes = Some(tx);
        }
    }
    Ok(CgroupReading {
        cpu_ns,
        memory_bytes,
        memory_usage_bytes,
        read_bytes,
        write_bytes,
        net_rx_bytes,
        net_tx_bytes,
        oom_kills,
        throttled_ns,
        memory_limit_bytes,
        cpu_limit_cores,
        pids,
    })
}

/// The agent's own network namespace, to tell a container's apart.
pub fn own_netns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory removed when dropped, even when a test fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("headroom-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.0.join(file), text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_cpu_stat_and_keyed_files() {
        let text = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_cpu_stat(text), Some(123_456));
        assert_eq!(parse_cpu_stat("user_usec 5\n"), None);
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(2));
        assert_eq!(parse_keyed(events, "oom"), Some(3), "exact keys only");
        assert_eq!(parse_keyed("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn sums_io_stat_and_blkio_over_devices() {
        let text = "8:0 rbytes=1000 wbytes=200 rios=3 wios=1 dbytes=0 dios=0\n\
                    8:16 rbytes=24 wbytes=6 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(parse_io_stat(text), (1024, 206));
        assert_eq!(parse_io_stat(""), (0, 0));
        let blkio = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 4608\n8:0 Async 0\n8:0 Total 4608\n\
                     8:16 Read 4\n8:16 Write 0\nTotal 4612\n";
        assert_eq!(parse_blkio(blkio), (4100, 512));
        assert_eq!(parse_blkio("Total 0\n"), (0, 0));
    }

    #[test]
    fn limits_are_absent_when_unlimited() {
        assert_eq!(parse_memory_limit("67108864\n"), Some(64 << 20));
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_cpu_max("20000 100000\n"), Some(0.2));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cfs_quota("150000\n", "100000\n"), Some(1.5));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None);
        assert_eq!(working_set(100, Some(30)), 70);
        assert_eq!(working_set(100, Some(130)), 0, "floored at 0");
        assert_eq!(working_set(100, None), 100);
    }

    #[test]
    fn sums_net_dev_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 5000 10 0 0 0 0 0 0 5000 10 0 0 0 0 0 0\n  \
eth0: 1200 12 0 0 0 0 0 0 340 4 0 0 0 0 0 0\n  \
eth1: 800 8 0 0 0 0 0 0 60 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(text), Some((2000, 400)));
    }

    /// The mounts of a development machine (v1 controllers, an empty
    /// unified tree) and of a v2-only Kubernetes node.
    const HYBRID: &str = "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
        cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
        cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0\n\
        cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
    const V2: &str = "proc /proc proc rw 0 0\n\
        cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n";

    #[test]
    fn detects_the_layout_from_the_mounts() {
        let v1 = Layout::from_mounts(HYBRID);
        assert_eq!(v1.name(), "v1");
        let Layout::V1(m) = &v1 else { unreachable!() };
        assert_eq!(
            m.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            m.cpuacct.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
        let combined = Layout::from_mounts(
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n",
        );
        let Layout::V1(m) = &combined else {
            unreachable!()
        };
        assert_eq!(m.cpu, m.cpuacct);
        let v2 = Layout::from_mounts(V2);
        assert_eq!(
            v2,
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert_eq!(
            Layout::from_mounts("proc /proc proc rw 0 0\n").name(),
            "none"
        );
    }

    #[test]
    fn resolves_a_cgroup_path_in_every_v1_controller() {
        let v1 = Layout::from_mounts(HYBRID);
        let want = CgroupDirs {
            cpu: "/sys/fs/cgroup/cpu/docker/abc".into(),
            cpuacct: "/sys/fs/cgroup/cpuacct/docker/abc".into(),
            memory: "/sys/fs/cgroup/memory/docker/abc".into(),
            blkio: "/sys/fs/cgroup/blkio/docker/abc".into(),
        };
        for given in [
            "docker/abc",
            "/sys/fs/cgroup/docker/abc",
            "/sys/fs/cgroup/memory/docker/abc",
            "/sys/fs/cgroup/cpuacct/docker/abc",
        ] {
            assert_eq!(v1.resolve(Path::new(given)), want, "{given}");
        }
        let elsewhere = Path::new("/tmp/not-a-cgroup");
        assert_eq!(v1.resolve(elsewhere), CgroupDirs::single(elsewhere));
        let v2 = Layout::from_mounts(V2);
        assert_eq!(
            v2.resolve(Path::new("system.slice/x.scope")),
            CgroupDirs::single("/sys/fs/cgroup/system.slice/x.scope")
        );
        assert_eq!(
            v1.discovery_root(Path::new("/sys/fs/cgroup")),
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            v2.discovery_root(Path::new("/sys/fs/cgroup")),
            PathBuf::from("/sys/fs/cgroup")
        );
    }

    #[test]
    fn reads_a_directory_laid_out_like_a_v2_cgroup() {
        let dir = TempDir::new("cg-v2");
        dir.write(
            "cpu.stat",
            "usage_usec 42\nuser_usec 40\nsystem_usec 2\nnr_periods 10\n\
             nr_throttled 4\nthrottled_usec 1500\n",
        );
        dir.write("memory.current", "104857600\n");
        dir.write(
            "memory.stat",
            "anon 20971520\nfile 83886080\nactive_file 8388608\ninactive_file 75497472\n",
        );
        dir.write(
            "memory.events",
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n",
        );
        dir.write("memory.max", "268435456\n");
        dir.write("cpu.max", "50000 100000\n");
        dir.write(
            "io.stat",
            "8:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
        );
        let r = read(&CgroupDirs::single(&dir.0), own_netns().as_deref()).unwrap();
        assert_eq!(r.cpu_ns, 42_000);
        assert_eq!(r.memory_usage_bytes, Some(100 << 20));
        assert_eq!(r.memory_bytes, Some(28 << 20), "usage − inactive_file");
        assert_eq!((r.read_bytes, r.write_bytes), (Some(1), Some(2)));
        assert_eq!(r.oom_kills, Some(2));
        assert_eq!(r.throttled_ns, Some(1_500_000));
        assert_eq!(r.memory_limit_bytes, Some(256 << 20));
        assert_eq!(r.cpu_limit_cores, Some(0.5));
        assert_eq!(
            r.net_rx_bytes, None,
            "no member process: network unobservable"
        );

        dir.write("memory.max", "max\n");
        dir.write("cpu.max", "max 100000\n");
        let r = read(&CgroupDirs::single(&dir.0), None).unwrap();
        assert_eq!((r.memory_limit_bytes, r.cpu_limit_cores), (None, None));
    }

    #[test]
    fn reads_a_directory_laid_out_like_a_v1_cgroup() {
        let dir = TempDir::new("cg-v1");
        dir.write("cpuacct.usage", "2500000000\n");
        dir.write(
            "cpu.stat",
            "nr_periods 50\nnr_throttled 40\nthrottled_time 3000000000\n",
        );
        dir.write("cpu.cfs_quota_us", "20000\n");
        dir.write("cpu.cfs_period_us", "100000\n");
        dir.write("memory.usage_in_bytes", "300000000\n");
        dir.write(
            "memory.stat",
            "cache 280000000\ninactive_file 1\ntotal_inactive_file 260000000\n",
        );
        dir.write(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        dir.write("memory.limit_in_bytes", "9223372036854771712\n");
        dir.write("blkio.throttle.io_service_bytes", "Total 0\n");
        dir.write(
            "blkio.bfq.io_service_bytes",
            "8:0 Read 10\n8:0 Write 20\nTotal 30\n",
        );
        let r = read(&CgroupDirs::single(&dir.0), None).unwrap();
        assert_eq!(r.cpu_ns, 2_500_000_000);
        assert_eq!(
            r.memory_bytes,
            Some(40_000_000),
            "usage − total_inactive_file"
        );
        assert_eq!(r.oom_kills, Some(1));
        assert_eq!(r.throttled_ns, Some(3_000_000_000));
        assert_eq!(r.cpu_limit_cores, Some(0.2));
        assert_eq!(r.memory_limit_bytes, None, "v1's unlimited");
        assert_eq!((r.read_bytes, r.write_bytes), (Some(10), Some(20)));
    }

    #[test]
    fn a_missing_cgroup_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("headroom-cg-none-{}", std::process::id()));
        let err = read(&CgroupDirs::single(&dir), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
}
