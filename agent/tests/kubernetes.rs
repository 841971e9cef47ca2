//! Kubernetes discovery against an HTTP endpoint answering as the API
//! server does: the request names this node and the label and carries the
//! service account's token; the answer's labelled containers are found in
//! a cgroup tree under their label's value. (No Kubernetes cluster runs on
//! these machines; the pod list is one a kubelet-managed node returns.)

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::Arc,
};

use headroom_agent::{
    Discovery,
    sampling::kubernetes::{DEFAULT_LABEL, KubeClient, KubeNames, KubeOptions},
};

const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

/// Serves one request with `status` and `body`; returns the request line
/// and headers it received.
fn serve_once(
    status: &'static str,
    body: String,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        head
    });
    (url, handle)
}

fn options(api: String, token_file: std::path::PathBuf) -> KubeOptions {
    KubeOptions {
        enabled: true,
        label: DEFAULT_LABEL.into(),
        node: Some("node-1".into()),
        api: Some(api),
        token_file: Some(token_file),
        ca_file: None,
    }
}

#[test]
fn labelled_pods_on_this_node_become_services() {
    let dir = std::env::temp_dir().join(format!("headroom-kube-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    let body = format!(
        r#"{{"kind":"PodList","items":[
          {{"metadata":{{"name":"cruncher-1","labels":{{"{DEFAULT_LABEL}":"cruncher"}}}},
            "status":{{"containerStatuses":[{{"name":"cruncher","containerID":"containerd://{ID}"}}]}}}}]}}"#
    );
    let (api, server) = serve_once("200 OK", body);
    let client = KubeClient::new(&options(api, token.clone())).unwrap();
    assert!(
        !format!("{client:?}").contains("s3cr3t"),
        "the token is never printed"
    );
    let names = client.names().unwrap();
    let head = server.join().unwrap();
    assert!(
        head[0].starts_with(
            "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&labelSelector=headroom.dev%2Fservice "
        ),
        "{head:?}"
    );
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("authorization: Bearer s3cr3t-token")),
        "{head:?}"
    );

    let cgroups = dir.join("cgroup");
    let container = cgroups.join(format!(
        "kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"
    ));
    std::fs::create_dir_all(&container).unwrap();
    std::fs::create_dir_all(cgroups.join(format!(
        "kubepods.slice/kubepods-pod2.slice/cri-containerd-{}.scope",
        ID.replace('4', "5")
    )))
    .unwrap();
    let found = Discovery::new(&cgroups, &[])
        .unwrap()
        .with_kubernetes(Arc::new(KubeNames::fixed(names)))
        .scan();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found["cruncher"], container);
}

#[test]
fn a_refused_listing_is_a_clear_error_without_the_token() {
    let dir = std::env::temp_dir().join(format!("headroom-kube-it2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cr3t-token").unwrap();
    let (api, server) = serve_once(
        "403 Forbidden",
        r#"{"kind":"Status","message":"pods is forbidden"}"#.into(),
    );
    let client = KubeClient::new(&options(api, token)).unwrap();
    let e = client.names().unwrap_err().to_string();
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(e.contains("403"), "{e}");
    assert!(e.contains("/api/v1/pods"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
}
