//! Target specifications as users write them (`web=pid:4242`,
//! `db=name:postgres`, `api=cmd:java.*billing`, `box=cgroup:system.slice/x.scope`
//! or a full path, on cgroup v1 or v2) and
//! their validation, which names the target in every error.

use std::path::PathBuf;

use headroom_proto::v1::{Target, target::Selector as ProtoSelector};
use regex::Regex;

use crate::sampling::{
    Selector,
    cgroup::{self, Layout},
};

/// A validated target.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Service name its samples carry.
    pub service: String,
    /// How its processes are found.
    pub selector: Selector,
}

/// Why a target specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {service:?}: {reason}")]
pub struct SpecError {
    /// The service the target was for.
    pub service: String,
    /// What is wrong.
    pub reason: String,
}

fn err(service: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        service: service.to_string(),
        reason: reason.into(),
    }
}

impl TargetSpec {
    /// Parses `service=kind:value` (kinds: pid, name, cmd, cgroup).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let (service, rest) = text.split_once('=').ok_or_else(|| {
            err(
                text,
                "expected service=kind:value (kinds: pid, name, cmd, cgroup)",
            )
        })?;
        let (kind, value) = rest.split_once(':').ok_or_else(|| {
            err(
                service,
                "expected kind:value after '=' (kinds: pid, name, cmd, cgroup)",
            )
        })?;
        let selector = match kind {
            "pid" => ProtoSelector::Pid(
                value
                    .parse()
                    .map_err(|_| err(service, format!("{value:?} is not a PID")))?,
            ),
            "name" => ProtoSelector::ProcessName(value.into()),
            "cmd" => ProtoSelector::CmdlinePattern(value.into()),
            "cgroup" => ProtoSelector::CgroupPath(value.into()),
            other => {
                return Err(err(
                    service,
                    format!("unknown kind {other:?} (kinds: pid, name, cmd, cgroup)"),
                ));
            }
        };
        Self::from_proto(&Target {
            service: service.into(),
            selector: Some(selector),
        })
    }

    /// Validates a target from the API: the name is set, the pattern
    /// compiles, the PID exists, the cgroup is readable.
    pub fn from_proto(target: &Target) -> Result<Self, SpecError> {
        let service = target.service.trim();
        if service.is_empty() || service.len() > 256 || service.chars().any(char::is_control) {
            return Err(err(
                service,
                "the service name must be 1 to 256 printable characters",
            ));
        }
        let selector = match &target.selector {
            None => {
                return Err(err(
                    service,
                    "no selector (pid, process_name, cmdline_pattern or cgroup_path)",
                ));
            }
            Some(ProtoSelector::Pid(pid)) => {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    return Err(err(service, format!("no process with pid {pid}")));
                }
                Selector::Pid(*pid)
            }
            Some(ProtoSelector::ProcessName(name)) if name.is_empty() => {
                return Err(err(service, "empty process name"));
            }
            Some(ProtoSelector::ProcessName(name)) => Selector::Name(name.clone()),
            Some(ProtoSelector::CmdlinePattern(p)) => Selector::Cmdline(
                Regex::new(p).map_err(|e| err(service, format!("bad pattern {p:?}: {e}")))?,
            ),
            Some(ProtoSelector::CgroupPath(path)) => {
                // Kept as given: the host's layout says where it leads.
                let dir = PathBuf::from(path);
                if let Err(e) = cgroup::check(&Layout::host().resolve(&dir)) {
                    return Err(err(
                        service,
                        format!("cgroup {} is not readable: {e}", dir.display()),
                    ));
                }
                Selector::Cgroup(dir)
            }
        };
        Ok(Self {
            service: service.to_string(),
            selector,
        })
    }

    /// The target as the API reports it.
    pub fn to_proto(&self) -> Target {
        let selector = match &self.selector {
            Selector::Pid(p) => ProtoSelector::Pid(*p),
            Selector::Name(n) => ProtoSelector::ProcessName(n.clone()),
            Selector::Cmdline(r) => ProtoSelector::CmdlinePattern(r.as_str().to_string()),
            Selector::Cgroup(d) => ProtoSelector::CgroupPath(d.display().to_string()),
        };
        Target {
            service: self.service.clone(),
            selector: Some(selector),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        let me = std::process::id();
        assert!(
            matches!(TargetSpec::parse(&format!("a=pid:{me}")).unwrap().selector, Selector::Pid(p) if p == me)
        );
        assert!(matches!(
            TargetSpec::parse("b=name:postgres").unwrap().selector,
            Selector::Name(_)
        ));
        assert!(matches!(
            TargetSpec::parse("c=cmd:java.*billing").unwrap().selector,
            Selector::Cmdline(_)
        ));
    }

    #[test]
    fn bad_targets_name_themselves() {
        for (text, want) in [
            ("web=pid:4000000", "no process with pid 4000000"),
            ("api=cmd:([", "bad pattern"),
            ("box=cgroup:/sys/fs/cgroup/headroom/none", "not readable"),
            ("db=disk:x", "unknown kind"),
            ("nothing", "expected service=kind:value"),
        ] {
            let e = TargetSpec::parse(text).unwrap_err().to_string();
            let service = text.split('=').next().unwrap();
            assert!(
                e.contains(&format!("{service:?}")) && e.contains(want),
                "{e}"
            );
        }
    }
}
