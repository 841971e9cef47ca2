//! Kubernetes discovery against an HTTP endpoint answering as the API
//! server does: the watch names this node and the label and carries the
//! service account's token; the listed pods and those the watch then adds
//! are found in a cgroup tree under their label's value; a refused watch
//! keeps the pods last seen and says why, without the token. (No
//! Kubernetes cluster runs on these machines; the pods are as a
//! kubelet-managed node's API server returns them.)

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use headroom_agent::{
    Discovery,
    sampling::kubernetes::{DEFAULT_LABEL, KubeNames, KubeOptions, watch_pods},
};
use headroom_testkit as kit;

const ID: &str = "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
const TOKEN: &str = "s3cr3t-token";

/// One pod labelled `service`, with one container per `(name, id)`.
fn pod(name: &str, service: &str, containers: &[(&str, &str)]) -> String {
    let statuses: Vec<String> = containers
        .iter()
        .map(|(c, id)| {
            format!(
                r#"{{"name":"{c}","image":"i","imageID":"","ready":true,"restartCount":0,"containerID":"containerd://{id}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"apps","resourceVersion":"8","labels":{{"{DEFAULT_LABEL}":"{service}"}}}},"status":{{"containerStatuses":[{}]}}}}"#,
        statuses.join(",")
    )
}

/// What the fake API server saw, and whether it refuses from now on.
#[derive(Debug, Default)]
struct Seen {
    /// Request line and headers of every request.
    requests: Vec<Vec<String>>,
    refuse: bool,
}

/// An API server answering a pod list with `listed` and a watch with one
/// ADDED event per `added`, holding the watch open until told to refuse.
fn fake_api(listed: Vec<String>, added: Vec<String>) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, listed, added) = (shared.clone(), listed.clone(), added.clone());
            std::thread::spawn(move || answer(stream, &seen, &listed, &added));
        }
    });
    (url, seen)
}

fn answer(mut stream: TcpStream, seen: &Mutex<Seen>, listed: &[String], added: &[String]) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let watch = head[0].contains("watch=true");
    let refuse = {
        let mut seen = seen.lock().unwrap();
        seen.requests.push(head);
        seen.refuse
    };
    if refuse {
        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden","reason":"Forbidden","code":403}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    if !watch {
        let body = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"7"}},"items":[{}]}}"#,
            listed.join(",")
        );
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // A watch streams events until the connection closes.
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
    );
    for pod in added {
        let _ = writeln!(stream, r#"{{"type":"ADDED","object":{pod}}}"#);
    }
    let _ = stream.flush();
    while !seen.lock().unwrap().refuse {
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// Waits until `names` counts `n` failed watch requests.
async fn failures(names: &KubeNames, n: u64) -> anyhow::Result<()> {
    kit::eventually(
        "a failed watch request",
        Duration::from_secs(30),
        || async { (names.failures() >= n).then_some(()) },
    )
    .await
}

#[tokio::test]
async fn labelled_pods_on_this_node_become_services_and_survive_a_failing_watch()
-> anyhow::Result<()> {
    kit::init_logs();
    let dir = std::env::temp_dir().join(kit::unique_name("headroom-kube-it"));
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("token");
    std::fs::write(&token, TOKEN)?;
    let cache_id = "aaaaaaaaaaaabbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let proxy_id = "ccccccccccccdddddddddddddddddddddddddddddddddddddddddddddddddddd";
    let (api, seen) = fake_api(
        vec![pod("cruncher-1", "cruncher", &[("cruncher", ID)])],
        vec![pod(
            "cache-1",
            "cache",
            &[("cache", cache_id), ("proxy", proxy_id)],
        )],
    );
    let names = watch_pods(&options(api, token.clone())).await?;
    assert!(!format!("{names:?}").contains("s3cr3t"));

    // The listed pod, then the one the watch added.
    let current = kit::eventually(
        "the listed and the watched pods",
        Duration::from_secs(30),
        || async {
            let current = names.current();
            (current.len() == 3).then_some(current)
        },
    )
    .await?;
    assert_eq!(current.service_of(&ID[..12]), Some("cruncher"));
    assert_eq!(current.service_of(&proxy_id[..12]), Some("cache-proxy"));
    {
        let seen = seen.lock().unwrap();
        let list = &seen.requests[0][0];
        assert!(list.starts_with("GET /api/v1/pods?"), "{list}");
        assert!(
            list.contains("fieldSelector=spec.nodeName%3Dnode-1"),
            "{list}"
        );
        assert!(
            list.contains("labelSelector=headroom.dev%2Fservice"),
            "{list}"
        );
        assert!(seen.requests.iter().any(|r| r[0].contains("watch=true")));
        for request in &seen.requests {
            assert!(
                request
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))),
                "{request:?}"
            );
        }
    }

    // Discovery reads the watched pods at its scan.
    let cgroups = dir.join("cgroup");
    let container = cgroups.join(format!(
        "kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"
    ));
    std::fs::create_dir_all(&container)?;
    std::fs::create_dir_all(cgroups.join(format!(
        "kubepods.slice/kubepods-pod2.slice/cri-containerd-{}.scope",
        ID.replace('4', "5")
    )))?;
    let found = Discovery::new(&cgroups, &[])?
        .with_kubernetes(names.clone())
        .scan();
    assert_eq!(found.len(), 1, "{found:?}");
    let key = ("cruncher".to_string(), "cruncher-1".to_string());
    assert_eq!(found[&key], container, "the pod names the instance");

    // The API server now refuses: the watch fails, the pods stay.
    assert_eq!(names.failures(), 0);
    seen.lock().unwrap().refuse = true;
    failures(&names, 1).await?;
    assert_eq!(names.current(), current, "the last pods seen are kept");
    let found = Discovery::new(&cgroups, &[])?
        .with_kubernetes(names.clone())
        .scan();
    assert_eq!(found.len(), 1, "{found:?}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_refused_watch_is_a_clear_error_without_the_token() -> anyhow::Result<()> {
    kit::init_logs();
    let dir = std::env::temp_dir().join(kit::unique_name("headroom-kube-it2"));
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("token");
    std::fs::write(&token, TOKEN)?;
    let (api, seen) = fake_api(vec![pod("cruncher-1", "cruncher", &[("c", ID)])], vec![]);
    seen.lock().unwrap().refuse = true;
    let names = watch_pods(&options(api, token)).await?;
    failures(&names, 1).await?;
    std::fs::remove_dir_all(&dir)?;
    assert!(
        names.current().is_empty(),
        "nothing listed, nothing watched"
    );
    let e = names.last_failure().unwrap_or_default();
    assert!(e.contains("forbidden"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
    Ok(())
}
