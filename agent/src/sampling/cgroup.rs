//! cgroup v2 accounting of one container: CPU time (`cpu.stat`), memory
//! (`memory.current`), block IO (`io.stat`), and network counters of the
//! container's network namespace (`/proc/<pid>/net/dev` of a member).

use std::path::{Path, PathBuf};

/// Counters read from one cgroup at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupReading {
    /// CPU time used, in microseconds.
    pub cpu_usec: u64,
    /// Memory in use, in bytes.
    pub memory_bytes: Option<u64>,
    /// Bytes read from block devices.
    pub read_bytes: Option<u64>,
    /// Bytes written to block devices.
    pub write_bytes: Option<u64>,
    /// Bytes received on the namespace's interfaces other than loopback,
    /// when the cgroup has its own network namespace.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent, likewise.
    pub net_tx_bytes: Option<u64>,
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

/// `usage_usec` from `cpu.stat`.
pub fn parse_cpu_stat(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

/// Sum of `rbytes` and `wbytes` over every device of `io.stat`.
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

/// Reads one cgroup directory. Network counters are reported only when the
/// cgroup's first process lives in another network namespace than
/// `own_netns` (the agent's), since otherwise they would be the host's.
pub fn read(dir: &Path, own_netns: Option<&str>) -> Result<CgroupReading, CgroupError> {
    let unreadable = |source| CgroupError::Unreadable {
        path: dir.to_path_buf(),
        source,
    };
    let cpu = std::fs::read_to_string(dir.join("cpu.stat")).map_err(unreadable)?;
    let cpu_usec = parse_cpu_stat(&cpu).ok_or(CgroupError::Malformed {
        path: dir.to_path_buf(),
        file: "cpu.stat",
    })?;
    let memory_bytes = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let (read_bytes, write_bytes) = match std::fs::read_to_string(dir.join("io.stat")) {
        Ok(t) => {
            let (r, w) = parse_io_stat(&t);
            (Some(r), Some(w))
        }
        Err(_) => (None, None),
    };
    let pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
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
        cpu_usec,
        memory_bytes,
        read_bytes,
        write_bytes,
        net_rx_bytes,
        net_tx_bytes,
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

    #[test]
    fn parses_cpu_stat() {
        let text = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_cpu_stat(text), Some(123_456));
        assert_eq!(parse_cpu_stat("user_usec 5\n"), None);
    }

    #[test]
    fn sums_io_stat_over_devices() {
        let text = "8:0 rbytes=1000 wbytes=200 rios=3 wios=1 dbytes=0 dios=0\n\
                    8:16 rbytes=24 wbytes=6 rios=1 wios=1 dbytes=0 dios=0\n";
        assert_eq!(parse_io_stat(text), (1024, 206));
        assert_eq!(parse_io_stat(""), (0, 0));
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

    #[test]
    fn reads_a_cgroup_directory_and_names_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("headroom-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 42\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("io.stat"), "8:0 rbytes=1 wbytes=2\n").unwrap();
        let r = read(&dir, own_netns().as_deref()).unwrap();
        assert_eq!(
            (r.cpu_usec, r.memory_bytes, r.read_bytes, r.write_bytes),
            (42, Some(4096), Some(1), Some(2))
        );
        assert_eq!(
            r.net_rx_bytes, None,
            "no member process: network unobservable"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = read(&dir, None).unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }
}
