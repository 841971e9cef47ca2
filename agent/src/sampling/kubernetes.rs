//! Kubernetes discovery: which containers on this node belong to pods
//! carrying the service label (`headroom.dev/service` by default), and the
//! service name each gets (the label's value). The agent asks the API server
//! for the node's labelled pods every rescan, with the pod's service
//! account, and [`Discovery`](super::Discovery) keeps only the cgroups of
//! those containers, named after the label.
//!
//! A pod with one container records it as the label's value; a pod with
//! several records each as `value-container`, so sidecars stay apart.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Deserialize;

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
    /// API server URL [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long = "kube-api", env = "HEADROOM_KUBE_API")]
    pub api: Option<String>,
    /// Bearer token file [default: the pod's service-account token].
    #[arg(long = "kube-token-file", env = "HEADROOM_KUBE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA bundle for the API server [default: the service account's ca.crt].
    #[arg(long = "kube-ca-file", env = "HEADROOM_KUBE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Why the pods could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The configuration is incomplete.
    #[error("kubernetes discovery: {0}")]
    Config(String),
    /// The request failed (connection, TLS, status).
    #[error("kubernetes API {url}: {reason}")]
    Request {
        /// What was asked, without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A client listing this node's labelled pods.
pub struct KubeClient {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
    label: String,
}

impl std::fmt::Debug for KubeClient {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("url", &self.url)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// A client from `options`, reading the token and CA files.
    pub fn new(options: &KubeOptions) -> Result<Self, KubeError> {
        let node = options
            .node
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                KubeError::Config("the node name is unknown: set --kube-node or NODE_NAME".into())
            })?;
        let api = match &options.api {
            Some(api) => api.trim_end_matches('/').to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    KubeError::Config(
                        "not in a pod (KUBERNETES_SERVICE_HOST unset): set --kube-api".into(),
                    )
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("https://{host}:{port}")
            }
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                KubeError::Config(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let token_file = options
            .token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(ACCOUNT).join("token"));
        // Outside a pod (tests, a local API proxy) there may be no token.
        let token = match read(&token_file, "token file") {
            Ok(t) => Some(String::from_utf8_lossy(&t).trim().to_string()),
            Err(e) if options.token_file.is_some() => return Err(e),
            Err(_) => None,
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if api.starts_with("https://") {
            let ca_file = options
                .ca_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(ACCOUNT).join("ca.crt"));
            let pem = read(&ca_file, "CA file")?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(KubeError::Config(format!(
                    "no certificate in the CA file {}",
                    ca_file.display()
                )));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!(
            "{api}/api/v1/pods?fieldSelector=spec.nodeName%3D{}&labelSelector={}",
            encode(&node),
            encode(&options.label)
        );
        Ok(Self {
            agent,
            url,
            token,
            label: options.label.clone(),
        })
    }

    /// Service names by container id (the runtime's id without its
    /// `containerd://` prefix), for this node's labelled, running pods.
    pub fn names(&self) -> Result<HashMap<String, String>, KubeError> {
        let fail = |reason: String| KubeError::Request {
            url: self.url.clone(),
            reason,
        };
        let mut request = self
            .agent
            .get(&self.url)
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        let mut response = request.call().map_err(|e| fail(e.to_string()))?;
        let pods: PodList = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_json()
            .map_err(|e| fail(format!("unreadable pod list: {e}")))?;
        Ok(service_names(&pods, &self.label))
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The part of a `PodList` discovery reads.
#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    /// The pods.
    #[serde(default)]
    pub items: Vec<Pod>,
}

/// One pod.
#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    /// Name and labels.
    #[serde(default)]
    pub metadata: PodMeta,
    /// Containers and their runtime ids.
    #[serde(default)]
    pub status: PodStatus,
}

/// A pod's metadata.
#[derive(Debug, Default, Deserialize)]
pub struct PodMeta {
    /// The pod's name.
    #[serde(default)]
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod's status.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// One entry per (non-init) container.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One container's status.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name in the pod spec.
    pub name: String,
    /// `runtime://id`; absent until the container was created.
    #[serde(rename = "containerID", default)]
    pub container_id: Option<String>,
}

/// Service names by container id for the pods carrying `label`.
pub fn service_names(pods: &PodList, label: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for pod in &pods.items {
        let Some(service) = pod.metadata.labels.get(label).filter(|v| !v.is_empty()) else {
            continue;
        };
        let several = pod.status.container_statuses.len() > 1;
        for c in &pod.status.container_statuses {
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
            names.insert(id.to_ascii_lowercase(), name);
        }
    }
    names
}

/// The names last listed, shared between the refresher and discovery.
/// `None` until the first successful listing: discovery then watches none.
#[derive(Debug, Default)]
pub struct KubeNames {
    names: RwLock<Option<HashMap<String, String>>>,
}

impl KubeNames {
    /// Names fixed to `names` (tests, static setups).
    pub fn fixed(names: HashMap<String, String>) -> Self {
        Self {
            names: RwLock::new(Some(names)),
        }
    }

    /// Replaces the names.
    pub fn set(&self, names: HashMap<String, String>) {
        if let Ok(mut n) = self.names.write() {
            *n = Some(names);
        }
    }

    /// The service a container of `id` belongs to. `id` may be the full id
    /// or a prefix of at least 12 characters (what cgroup patterns capture).
    pub fn service_of(&self, id: &str) -> Option<String> {
        if id.len() < 12 {
            return None;
        }
        let names = self.names.read().ok()?;
        let names = names.as_ref()?;
        names.get(id).cloned().or_else(|| {
            names
                .iter()
                .find(|(full, _)| full.starts_with(id))
                .map(|(_, s)| s.clone())
        })
    }
}

/// Lists the pods every `every` on a thread of its own, updating the names;
/// a failed listing keeps the last names and is logged.
pub fn spawn_refresher(client: KubeClient, every: Duration) -> Arc<KubeNames> {
    let names = Arc::new(KubeNames::default());
    let shared = names.clone();
    std::thread::Builder::new()
        .name("kube-discovery".into())
        .spawn(move || {
            loop {
                match client.names() {
                    Ok(n) => {
                        tracing::debug!(containers = n.len(), "kubernetes pods listed");
                        shared.set(n);
                    }
                    Err(e) => tracing::warn!(error = %e, "kubernetes pods not listed; keeping the last names"),
                }
                // Discovery holds the only other reference: once it is gone,
                // so is the need to list.
                if Arc::strong_count(&shared) == 1 {
                    return;
                }
                std::thread::sleep(every);
            }
        })
        .expect("spawning the kubernetes discovery thread");
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_LIST: &str = r#"{
      "kind": "PodList", "apiVersion": "v1",
      "items": [
        {"metadata": {"name": "cruncher-7d9f", "labels": {"headroom.dev/service": "cruncher", "app": "x"}},
         "status": {"containerStatuses": [
           {"name": "cruncher", "containerID": "containerd://4F1C2B3A9D8E7F6A5B4C3D2E1F0A9B8C7D6E5F4A3B2C1D0E9F8A7B6C5D4E3F2A"}]}},
        {"metadata": {"name": "cache-1", "labels": {"headroom.dev/service": "cache"}},
         "status": {"containerStatuses": [
           {"name": "cache", "containerID": "cri-o://aaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},
           {"name": "proxy", "containerID": "cri-o://ccccccccccccdddddddddddddddddddddddddddddddddddddddddddddddddddd"}]}},
        {"metadata": {"name": "pending", "labels": {"headroom.dev/service": "late"}},
         "status": {"containerStatuses": [{"name": "late"}]}},
        {"metadata": {"name": "unlabelled"},
         "status": {"containerStatuses": [{"name": "u", "containerID": "docker://eeeeeeeeeeee"}]}}
      ]}"#;

    #[test]
    fn labelled_pods_name_their_containers() {
        let pods: PodList = serde_json::from_str(POD_LIST).unwrap();
        let names = service_names(&pods, DEFAULT_LABEL);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(
            names["4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"],
            "cruncher"
        );
        let k = KubeNames::fixed(names);
        assert_eq!(k.service_of("aaaaaaaaaaaa").as_deref(), Some("cache-cache"));
        assert_eq!(k.service_of("cccccccccccc").as_deref(), Some("cache-proxy"));
        assert_eq!(k.service_of("4f1c2b3a9d8e").as_deref(), Some("cruncher"));
        assert_eq!(k.service_of("eeeeeeeeeeee"), None, "unlabelled");
        assert_eq!(k.service_of("4f1c"), None, "too short to be an id");
        assert!(service_names(&pods, "other/label").is_empty());
    }

    #[test]
    fn nothing_is_known_before_the_first_listing() {
        assert_eq!(KubeNames::default().service_of("aaaaaaaaaaaa"), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("headroom.dev/service"), "headroom.dev%2Fservice");
        assert_eq!(encode("node-1"), "node-1");
    }

    #[test]
    fn the_client_needs_a_node_and_an_api_server() {
        let options = KubeOptions {
            enabled: true,
            label: DEFAULT_LABEL.into(),
            node: None,
            api: Some("http://127.0.0.1:1".into()),
            token_file: None,
            ca_file: None,
        };
        let e = KubeClient::new(&options).unwrap_err();
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
        let e = KubeClient::new(&KubeOptions {
            node: Some("n1".into()),
            api: Some("https://127.0.0.1:1".into()),
            ca_file: Some("/nonexistent/ca.crt".into()),
            ..options
        })
        .unwrap_err();
        assert!(e.to_string().contains("cannot read the CA file"), "{e}");
    }
}
