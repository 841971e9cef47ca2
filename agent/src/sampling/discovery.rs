//! Container discovery: walks a cgroup tree (v2, or v1's memory controller
//! tree) and turns every directory whose path (relative to the root)
//! matches a pattern into a watched instance of a service. The service
//! name is the pattern's `service` capture, so the same code finds Docker's
//! `docker-<id>.scope`, cgroupfs-driver `docker/<id>` and Kubernetes
//! `kubepods…/cri-containerd-<id>.scope` directories, and users name their
//! own layouts with their own patterns.
//!
//! Every matching directory is its own instance (replica), named by, in
//! order: the Kubernetes pod name (with Kubernetes discovery); the
//! pattern's `instance` capture (the default patterns capture the first 12
//! hex digits of the container id, as `docker ps` shows it); else the
//! directory's path relative to the root.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    cgroup::Layout,
    kubernetes::{ContainerNames, KubeNames},
};

use regex::Regex;

/// Patterns used when none are configured: Docker with the systemd and the
/// cgroupfs driver, and Kubernetes containers (containerd, CRI-O, Docker)
/// under `kubepods` slices. Each names the service after the first 12 hex
/// digits of the container id, as `docker ps` does, and captures those
/// digits as the instance.
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"(?:^|/)(?P<service>docker-(?P<instance>[0-9a-f]{12}))[0-9a-f]{52}\.scope$",
    r"(?:^|/)docker/(?P<service>(?P<instance>[0-9a-f]{12}))[0-9a-f]{52}$",
    r"(?:^|/)kubepods[^/]*(?:/[^/]+)*/(?:cri-containerd-|crio-|docker-)?(?P<service>(?P<instance>[0-9a-f]{12}))[0-9a-f]{52}(?:\.scope)?$",
];

/// How deep below the root directories are examined; Kubernetes nests
/// containers four levels down (kubepods / qos / pod / container).
const MAX_DEPTH: usize = 6;

/// Why a discovery configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The pattern is not a regular expression.
    #[error("discovery pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What the regex parser said.
        reason: String,
    },
    /// The pattern has no `service` capture group.
    #[error("discovery pattern {0:?} has no (?P<service>…) group naming the service")]
    NoServiceGroup(String),
}

/// Discovered instances: (service, instance) → cgroup directory.
pub type Found = BTreeMap<(String, String), PathBuf>;

/// Finds containers under one cgroup root.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The tree walked (on cgroup v1, the memory controller's tree when the
    /// cgroup root was given).
    root: PathBuf,
    patterns: Vec<Regex>,
    /// With Kubernetes discovery: only containers of labelled pods, named
    /// after the label.
    kube: Option<Arc<KubeNames>>,
}

impl Discovery {
    /// Discovery under `root` with `patterns` (the defaults when empty). On
    /// a cgroup v1 host, the cgroup root is walked through its memory
    /// controller's tree (see [`Layout::discovery_root`]).
    pub fn new(root: impl Into<PathBuf>, patterns: &[String]) -> Result<Self, DiscoveryError> {
        let texts: Vec<&str> = if patterns.is_empty() {
            DEFAULT_PATTERNS.to_vec()
        } else {
            patterns.iter().map(String::as_str).collect()
        };
        let patterns = texts
            .into_iter()
            .map(|p| {
                let re = Regex::new(p).map_err(|e| DiscoveryError::BadPattern {
                    pattern: p.to_string(),
                    reason: e.to_string(),
                })?;
                if !re.capture_names().any(|n| n == Some("service")) {
                    return Err(DiscoveryError::NoServiceGroup(p.to_string()));
                }
                Ok(re)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            root: Layout::host().discovery_root(&root.into()),
            patterns,
            kube: None,
        })
    }

    /// Keeps only the containers `names` knows (the node's labelled pods),
    /// named as it says; `names` is read once per scan.
    pub fn with_kubernetes(mut self, names: Arc<KubeNames>) -> Self {
        self.kube = Some(names);
        self
    }

    /// The cgroup root being walked.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The service name a cgroup path (relative to the root) gets, if any
    /// pattern matches it.
    pub fn name_of(&self, relative: &str) -> Option<String> {
        self.names_of(relative).map(|(service, _)| service)
    }

    /// The service and instance a cgroup path (relative to the root) gets,
    /// if any pattern matches it: the `instance` capture, else the path.
    pub fn names_of(&self, relative: &str) -> Option<(String, String)> {
        self.patterns.iter().find_map(|re| {
            let captures = re.captures(relative)?;
            let service = captures
                .name("service")
                .map(|m| m.as_str().to_string())
                .filter(|s| !s.is_empty())?;
            let instance = captures
                .name("instance")
                .map(|m| m.as_str())
                .filter(|i| !i.is_empty())
                .unwrap_or(relative);
            Some((service, instance.to_string()))
        })
    }

    /// Every matching cgroup directory, by (service, instance): every
    /// container of a service is found, each its own instance. A matched
    /// directory is not descended into (a container's own sub-cgroups
    /// belong to it). Unreadable directories are skipped: discovery sees
    /// what it can.
    pub fn scan(&self) -> Found {
        let mut found = BTreeMap::new();
        let kube = self.kube.as_ref().map(|k| k.current());
        self.walk(&self.root, 0, kube.as_ref(), &mut found);
        found
    }

    fn walk(&self, dir: &Path, depth: usize, kube: Option<&ContainerNames>, found: &mut Found) {
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            // cgroupfs holds only directories and files; symlinks are not
            // followed, which also rules out loops.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(&self.root) else {
                continue;
            };
            match self.names_of(&relative.to_string_lossy()) {
                Some((captured, instance)) => {
                    let names = match kube {
                        // The pattern captured the container id.
                        Some(kube) => {
                            let id = captured.trim_start_matches("docker-");
                            kube.service_of(id).map(|service| {
                                let pod = kube.pod_of(id).map_or(instance, str::to_string);
                                (service.to_string(), pod)
                            })
                        }
                        None => Some((captured, instance)),
                    };
                    if let Some(key) = names {
                        if let Some(first) = found.get(&key) {
                            tracing::debug!(
                                service = %key.0,
                                instance = %key.1,
                                kept = %first.display(),
                                skipped = %path.display(),
                                "two cgroups name the same instance"
                            );
                        } else {
                            found.insert(key, path);
                        }
                    }
                }
                None => self.walk(&path, depth + 1, kube, found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    fn key(service: &str, instance: &str) -> (String, String) {
        (service.to_string(), instance.to_string())
    }

    #[test]
    fn every_replica_of_a_service_is_its_own_instance() {
        let root = std::env::temp_dir().join(format!("headroom-replicas-{}", std::process::id()));
        let dirs = [
            "apps/billing-1.scope",
            "apps/billing-2.scope",
            "apps/web.scope",
        ];
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let named = Discovery::new(
            &root,
            &[r"^apps/(?P<service>[a-z]+)(?:-(?P<instance>\d+))?\.scope$".into()],
        )
        .unwrap()
        .scan();
        let unnamed = Discovery::new(&root, &[r"^apps/(?P<service>[a-z]+)[^/]*\.scope$".into()])
            .unwrap()
            .scan();
        std::fs::remove_dir_all(&root).unwrap();
        let keys: Vec<_> = named.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                key("billing", "1"),
                key("billing", "2"),
                key("web", "apps/web.scope")
            ]
        );
        assert_eq!(named[&key("billing", "2")], root.join(dirs[1]));
        let keys: Vec<_> = unnamed.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                key("billing", dirs[0]),
                key("billing", dirs[1]),
                key("web", dirs[2])
            ],
            "without an instance group, the path names the instance"
        );
    }

    #[test]
    fn default_patterns_name_docker_and_kubernetes_containers() {
        let d = Discovery::new("/sys/fs/cgroup", &[]).unwrap();
        assert_eq!(
            d.name_of(&format!("system.slice/docker-{ID}.scope"))
                .as_deref(),
            Some("docker-4f1c2b3a9d8e")
        );
        assert_eq!(
            d.name_of(&format!("docker/{ID}")).as_deref(),
            Some("4f1c2b3a9d8e")
        );
        assert_eq!(
            d.name_of(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope"
            ))
            .as_deref(),
            Some("4f1c2b3a9d8e")
        );
        assert_eq!(
            d.name_of(&format!("kubepods/besteffort/pod1234-5678/{ID}"))
                .as_deref(),
            Some("4f1c2b3a9d8e")
        );
        assert_eq!(d.name_of("system.slice/ssh.service"), None);
        assert_eq!(d.name_of("docker-abc.scope"), None, "not a container id");
    }

    #[test]
    fn custom_patterns_need_a_service_group() {
        let d = Discovery::new("/x", &[r"^apps/(?P<service>[a-z]+)$".into()]).unwrap();
        assert_eq!(d.name_of("apps/billing").as_deref(), Some("billing"));
        assert_eq!(d.name_of("apps/billing/worker"), None);
        assert!(matches!(
            Discovery::new("/x", &["apps/[a-z]+".into()]),
            Err(DiscoveryError::NoServiceGroup(_))
        ));
        assert!(matches!(
            Discovery::new("/x", &["(".into()]),
            Err(DiscoveryError::BadPattern { .. })
        ));
    }

    #[test]
    fn scan_finds_matching_directories_without_descending_into_them() {
        let root = std::env::temp_dir().join(format!("headroom-discovery-{}", std::process::id()));
        let docker = root.join(format!("system.slice/docker-{ID}.scope"));
        let inner = docker.join(format!("docker-{ID}.scope"));
        let pod = root.join(format!("kubepods/burstable/pod42/{}", ID.replace('4', "7")));
        for dir in [&inner, &pod, &root.join("user.slice/user-0.slice")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let found = Discovery::new(&root, &[]).unwrap().scan();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[&key("docker-4f1c2b3a9d8e", "4f1c2b3a9d8e")], docker);
        assert_eq!(found[&key("7f1c2b3a9d8e", "7f1c2b3a9d8e")], pod);
    }

    #[test]
    fn with_kubernetes_only_labelled_containers_are_found_by_their_label() {
        let root = std::env::temp_dir().join(format!("headroom-kube-{}", std::process::id()));
        let other = ID.replace('4', "9");
        let labelled = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
        ));
        let unlabelled = root.join(format!("kubepods/besteffort/pod2/{other}"));
        for dir in [&labelled, &unlabelled] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let names = Arc::new(KubeNames::fixed(std::collections::HashMap::from([(
            ID.to_string(),
            ("cruncher".to_string(), "cruncher-7d9f".to_string()),
        )])));
        let found = Discovery::new(&root, &[])
            .unwrap()
            .with_kubernetes(names)
            .scan();
        let before_listing = Discovery::new(&root, &[])
            .unwrap()
            .with_kubernetes(Arc::new(KubeNames::fixed(ContainerNames::default())))
            .scan();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[&key("cruncher", "cruncher-7d9f")], labelled);
        assert!(before_listing.is_empty(), "{before_listing:?}");
    }
}
