//! Kubernetes discovery: which containers on this node belong to pods
//! carrying the service label (`headroom.dev/service` by default), and the
//! service name each gets (the label's value). The agent watches the node's
//! labelled pods through the API server (a kube-rs reflector), and
//! [`Discovery`](super::Discovery) reads the watched pods at every rescan,
//! keeping only the cgroups of their containers, named after the label.
//!
//! A pod with one container records it as the label's value; a pod with
//! several records each as `value-container`, so sidecars stay apart. The
//! pod's name is the instance: each replica of a service is its own.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The label naming a pod's service by default.
pub const DEFAULT_LABEL: &str = "headroom.dev/service";
/// Where a pod finds its service account.
const ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server and what to ask it.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeOptions {
    /// Discover containers through the Kubernetes API: only pods on this
    /// node carrying `--kube-label` are watched, named after its value.
    #[arg(long = "kubernetes", env = "HEADROOM_KUBERNETES")]
    pub enabled: bool,
    /// The label whose value names a pod's service.
    #[arg(long = "kube-label", env = "HEADROOM_KUBE_LABEL", default_value = DEFAULT_LABEL)]
    pub label: String,
    /// This node's name (the Downward API's `spec.nodeName`).
    #[arg(long = "kube-node", env = "NODE_NAME")]
    pub node: Option<String>,
    /// API server URL [default: in a pod, https://$KUBERNETES_SERVICE_HOST:
    /// $KUBERNETES_SERVICE_PORT; else the kubeconfig's cluster].
    #[arg(long = "kube-api", env = "HEADROOM_KUBE_API")]
    pub api: Option<String>,
    /// Bearer token file, re-read as it rotates [default: the pod's
    /// service-account token].
    #[arg(long = "kube-token-file", env = "HEADROOM_KUBE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA bundle for the API server, re-read as it rotates [default: the
    /// service account's ca.crt].
    #[arg(long = "kube-ca-file", env = "HEADROOM_KUBE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Why the pods cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The configuration is incomplete.
    #[error("kubernetes discovery: {0}")]
    Config(String),
    /// No client could be built from the configuration.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Service and pod names by container id (the runtime's id without its
/// `containerd://` prefix, lower case), from one reading of the pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerNames(HashMap<String, (String, String)>);

impl ContainerNames {
    fn get(&self, id: &str) -> Option<&(String, String)> {
        if id.len() < 12 {
            return None;
        }
        self.0.get(id).or_else(|| {
            self.0
                .iter()
                .find(|(full, _)| full.starts_with(id))
                .map(|(_, names)| names)
        })
    }

    /// The service a container of `id` belongs to. `id` may be the full id
    /// or a prefix of at least 12 characters (what cgroup patterns capture).
    pub fn service_of(&self, id: &str) -> Option<&str> {
        self.get(id).map(|(service, _)| service.as_str())
    }

    /// The name of the pod a container of `id` runs in (the instance);
    /// `None` when unknown or not named.
    pub fn pod_of(&self, id: &str) -> Option<&str> {
        self.get(id)
            .map(|(_, pod)| pod.as_str())
            .filter(|p| !p.is_empty())
    }

    /// How many containers are named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no container is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Service names by container id, pods unnamed.
impl From<HashMap<String, String>> for ContainerNames {
    fn from(names: HashMap<String, String>) -> Self {
        Self(
            names
                .into_iter()
                .map(|(id, service)| (id, (service, String::new())))
                .collect(),
        )
    }
}

/// (service, pod) names by container id.
impl From<HashMap<String, (String, String)>> for ContainerNames {
    fn from(names: HashMap<String, (String, String)>) -> Self {
        Self(names)
    }
}

/// Service names by container id for the `pods` carrying `label`.
pub fn service_names<'a>(pods: impl IntoIterator<Item = &'a Pod>, label: &str) -> ContainerNames {
    let mut names = HashMap::new();
    for pod in pods {
        let Some(service) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let several = statuses.len() > 1;
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        for c in statuses {
            let Some(id) = c
                .container_id
                .as_deref()
                .map(|id| id.rsplit("://").next().unwrap_or(id))
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            let name = if several {
                format!("{service}-{}", c.name)
            } else {
                service.clone()
            };
            names.insert(id.to_ascii_lowercase(), (name, pod_name.clone()));
        }
    }
    ContainerNames(names)
}

/// Where the names come from.
enum Source {
    /// Given once (tests, static setups).
    Fixed(ContainerNames),
    /// The node's labelled pods as the watch last saw them.
    Watched {
        pods: reflector::Store<Pod>,
        label: String,
    },
}

/// The pods discovery reads at every rescan. Dropping the last reference
/// ends the watch.
pub struct KubeNames {
    source: Source,
    /// Failed watch requests, and the last one's reason (no credentials:
    /// the token travels in a header kube-rs never prints).
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    _stop: Option<DropGuard>,
}

impl std::fmt::Debug for KubeNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Fixed(_) => "fixed",
            Source::Watched { .. } => "watched",
        };
        f.debug_struct("KubeNames")
            .field("source", &source)
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

impl KubeNames {
    /// Names fixed to `names` (tests, static setups).
    pub fn fixed(names: impl Into<ContainerNames>) -> Self {
        Self::from_source(Source::Fixed(names.into()), None)
    }

    fn from_source(source: Source, stop: Option<DropGuard>) -> Self {
        Self {
            source,
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            _stop: stop,
        }
    }

    /// The names as of now: empty until the watch has listed the pods once;
    /// after a failure, those of the last pods seen.
    pub fn current(&self) -> ContainerNames {
        match &self.source {
            Source::Fixed(names) => names.clone(),
            Source::Watched { pods, label } => {
                service_names(pods.state().iter().map(|p| p.as_ref()), label)
            }
        }
    }

    /// How many watch requests failed since the start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Why the last failed watch request failed.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok()?.clone()
    }

    fn failed(&self, error: &watcher::Error) {
        let reason = error.to_string();
        tracing::warn!(error = %reason, "kubernetes pod watch failed; keeping the last pods");
        metrics::counter!("headroom_agent_kube_watch_failures_total").increment(1);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(reason);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The client configuration `options` describe. Without `--kube-api`, the
/// in-cluster configuration (or a kubeconfig, outside a pod); the token and
/// CA files are given to kube-rs as files, which it re-reads as they rotate.
pub async fn client_config(options: &KubeOptions) -> Result<kube::Config, KubeError> {
    let mut config = match &options.api {
        Some(api) => {
            let uri = api
                .parse()
                .map_err(|e| KubeError::Config(format!("API server URL {api:?}: {e}")))?;
            let mut config = kube::Config::new(uri);
            // Outside a pod (tests, a local API proxy) there may be no token.
            let account_token = Path::new(ACCOUNT).join("token");
            if options.token_file.is_none() && account_token.exists() {
                config.auth_info.token_file = Some(account_token.to_string_lossy().into_owned());
            }
            if api.starts_with("https://") && options.ca_file.is_none() {
                set_ca(&mut config, &Path::new(ACCOUNT).join("ca.crt"))?;
            }
            config
        }
        None => kube::Config::infer().await.map_err(|e| {
            KubeError::Config(format!(
                "not in a pod and no kubeconfig ({e}): set --kube-api"
            ))
        })?,
    };
    if let Some(token_file) = &options.token_file {
        let token = std::fs::read_to_string(token_file).map_err(|e| {
            KubeError::Config(format!(
                "cannot read the token file {}: {e}",
                token_file.display()
            ))
        })?;
        // kube-rs sends the file as it is: a trailing newline would make
        // every request unauthorized, so it is refused here, by name.
        if token.trim() != token || token.is_empty() {
            return Err(KubeError::Config(format!(
                "the token file {} is empty or has surrounding whitespace \
                 (a trailing newline?): write the token alone",
                token_file.display()
            )));
        }
        config.auth_info.token = None;
        config.auth_info.token_file = Some(token_file.to_string_lossy().into_owned());
    }
    if let Some(ca_file) = &options.ca_file {
        set_ca(&mut config, ca_file)?;
    }
    Ok(config)
}

/// Trusts the certificates of `ca_file`, which kube-rs re-reads as it rotates.
fn set_ca(config: &mut kube::Config, ca_file: &Path) -> Result<(), KubeError> {
    let pem = std::fs::read(ca_file).map_err(|e| {
        KubeError::Config(format!(
            "cannot read the CA file {}: {e}",
            ca_file.display()
        ))
    })?;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    if certs.is_empty() {
        return Err(KubeError::Config(format!(
            "no certificate in the CA file {}",
            ca_file.display()
        )));
    }
    config.root_cert = Some(certs);
    config.root_cert_file = Some(ca_file.to_path_buf());
    Ok(())
}

/// Starts watching this node's pods carrying the label, on a task of its
/// own; the names follow every change the API server reports. A failing
/// watch is retried with backoff and keeps the last pods seen.
pub async fn watch_pods(options: &KubeOptions) -> Result<Arc<KubeNames>, KubeError> {
    let node = options
        .node
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            KubeError::Config("the node name is unknown: set --kube-node or NODE_NAME".into())
        })?;
    let config = client_config(options).await?;
    tracing::info!(
        api = %config.cluster_url,
        node = %node,
        label = %options.label,
        "kubernetes discovery"
    );
    let client = Client::try_from(config)?;
    let selection = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels(&options.label);
    let (pods, writer) = reflector::store();
    let stop = CancellationToken::new();
    let names = Arc::new(KubeNames::from_source(
        Source::Watched {
            pods,
            label: options.label.clone(),
        },
        Some(stop.clone().drop_guard()),
    ));
    // The task holds no strong reference: dropping discovery ends it.
    let watched = Arc::downgrade(&names);
    let events = watcher(Api::<Pod>::all(client), selection)
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = events.next() => event,
            };
            let Some(event) = event else { return };
            let Some(names) = watched.upgrade() else {
                return;
            };
            match event {
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(containers = names.current().len(), "kubernetes pods listed");
                }
                Ok(_) => {}
                Err(e) => names.failed(&e),
            }
        }
    });
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod list as a kubelet-managed node's API server returns it.
    const POD_LIST: &str = r#"{
      "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"},
      "items": [
        {"metadata": {"name": "cruncher-7d9f", "labels": {"headroom.dev/service": "cruncher", "app": "x"}},
         "status": {"containerStatuses": [
           {"name": "cruncher", "image": "c", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "containerd://4F1C2B3A9D8E7F6A5B4C3D2E1F0A9B8C7D6E5F4A3B2C1D0E9F8A7B6C5D4E3F2A"}]}},
        {"metadata": {"name": "cache-1", "labels": {"headroom.dev/service": "cache"}},
         "status": {"containerStatuses": [
           {"name": "cache", "image": "c", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "cri-o://aaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},
           {"name": "proxy", "image": "p", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "cri-o://ccccccccccccdddddddddddddddddddddddddddddddddddddddddddddddddddd"}]}},
        {"metadata": {"name": "pending", "labels": {"headroom.dev/service": "late"}},
         "status": {"containerStatuses": [
           {"name": "late", "image": "l", "imageID": "", "ready": false, "restartCount": 0}]}},
        {"metadata": {"name": "unlabelled"},
         "status": {"containerStatuses": [
           {"name": "u", "image": "u", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "docker://eeeeeeeeeeee"}]}}
      ]}"#;

    fn recorded_pods() -> Vec<Pod> {
        serde_json::from_str::<k8s_openapi::List<Pod>>(POD_LIST)
            .unwrap()
            .items
    }

    #[test]
    fn labelled_pods_name_their_containers() {
        let pods = recorded_pods();
        let names = service_names(&pods, DEFAULT_LABEL);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            names.service_of("4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"),
            Some("cruncher")
        );
        let k = KubeNames::fixed(names).current();
        assert_eq!(k.service_of("aaaaaaaaaaaa"), Some("cache-cache"));
        assert_eq!(k.service_of("cccccccccccc"), Some("cache-proxy"));
        assert_eq!(k.service_of("4f1c2b3a9d8e"), Some("cruncher"));
        assert_eq!(k.pod_of("4f1c2b3a9d8e"), Some("cruncher-7d9f"));
        assert_eq!(
            k.pod_of("cccccccccccc"),
            Some("cache-1"),
            "the pod is the instance"
        );
        assert_eq!(k.service_of("eeeeeeeeeeee"), None, "unlabelled");
        assert_eq!(k.service_of("4f1c"), None, "too short to be an id");
        assert!(service_names(&pods, "other/label").is_empty());
    }

    #[test]
    fn nothing_is_known_before_the_first_listing() {
        let (pods, _writer) = reflector::store();
        let names = KubeNames::from_source(
            Source::Watched {
                pods,
                label: DEFAULT_LABEL.into(),
            },
            None,
        );
        assert_eq!(names.current().service_of("aaaaaaaaaaaa"), None);
    }

    fn options() -> KubeOptions {
        KubeOptions {
            enabled: true,
            label: DEFAULT_LABEL.into(),
            node: None,
            api: Some("http://127.0.0.1:1".into()),
            token_file: None,
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn the_watch_needs_a_node_and_a_readable_ca() {
        let e = watch_pods(&options()).await.unwrap_err();
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
        let e = watch_pods(&KubeOptions {
            node: Some("n1".into()),
            api: Some("https://127.0.0.1:1".into()),
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..options()
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("cannot read the CA file"), "{e}");
    }

    #[tokio::test]
    async fn the_token_is_given_as_a_file_so_that_rotation_is_seen() {
        let token = std::env::temp_dir().join(format!("headroom-token-{}", std::process::id()));
        std::fs::write(&token, "s3cr3t").unwrap();
        let config = client_config(&KubeOptions {
            token_file: Some(token.clone()),
            ..options()
        })
        .await
        .unwrap();
        assert_eq!(
            config.auth_info.token_file.as_deref(),
            Some(token.to_str().unwrap())
        );
        assert!(
            config.auth_info.token.is_none(),
            "read once, never reloaded"
        );
        assert!(!format!("{config:?}").contains("s3cr3t"));

        std::fs::write(&token, "s3cr3t\n").unwrap();
        let e = client_config(&KubeOptions {
            token_file: Some(token.clone()),
            ..options()
        })
        .await
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&token).unwrap();
        assert!(
            e.contains("trailing newline") && !e.contains("s3cr3t"),
            "{e}"
        );
    }
}
