//! Brokers of a test's own: a private nisshi (tansu's maintained successor,
//! the broker `scripts/stack` installs) that a test may kill and start
//! again (in memory, or on a SQLite file that keeps topics, records and
//! group offsets across a kill), and a TLS front that puts a real TLS
//! listener before a broker, so Kafka clients can be tested over SSL.

use std::{
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring::default_provider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};
use tokio_util::sync::CancellationToken;

use crate::pki::TestPki;

/// A free port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a private broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In memory: a restart starts empty.
    Memory,
    /// A SQLite file in the broker's own directory: topics, records and
    /// committed offsets survive a kill.
    Durable,
}

/// A broker of a test's own, on its own port, so a test can kill and
/// restart it without disturbing other tests.
#[derive(Debug)]
pub struct PrivateBroker {
    bin: PathBuf,
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    advertised_port: u16,
    dir: PathBuf,
    storage: Storage,
    authentication: bool,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    /// A broker in memory on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Storage::Memory, None)
    }

    /// A broker on a SQLite file, on a free port: what was written before a
    /// kill is there after [`PrivateBroker::start_again`].
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(Storage::Durable, None)
    }

    /// A broker with `storage` that tells clients to reach it on
    /// `advertised_port` (default: its own port), as when a TLS front
    /// stands before it. The binary comes from [`broker_bin`].
    pub fn start_with(storage: Storage, advertised_port: Option<u16>) -> anyhow::Result<Self> {
        let bin = broker_bin();
        let port = free_port()?;
        let dir = std::env::temp_dir().join(crate::unique_name("broker"));
        std::fs::create_dir_all(&dir)?;
        let mut broker = Self {
            bin,
            port,
            advertised_port: advertised_port.unwrap_or(port),
            dir,
            storage,
            authentication: false,
            child: None,
        };
        broker.start_again()?;
        Ok(broker)
    }

    /// `127.0.0.1:port`, where it listens.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:advertised_port`, where it tells clients to connect.
    pub fn advertised_address(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// From the next start on, clients must authenticate (SASL SCRAM) and
    /// are told to connect on `advertised_port`.
    pub fn set_next_start(&mut self, authentication: bool, advertised_port: u16) {
        self.authentication = authentication;
        self.advertised_port = advertised_port;
    }

    /// Creates a SCRAM-SHA-512 user through the running broker (`nisshi
    /// user create`); with durable storage it outlives restarts.
    pub fn create_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        let broker = format!("tcp://{}", self.address());
        let out = std::process::Command::new(&self.bin)
            .args(["user", "create", "--broker", &broker])
            .args(["--mechanism", "scram512", name, password])
            .output()?;
        if !out.status.success() {
            bail!(
                "{} user create {name} failed: {}",
                self.bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the stopped broker again on the same port and storage.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        // The SQLite path is relative to the working directory.
        let storage = match self.storage {
            Storage::Memory => "memory://broker/",
            Storage::Durable => "sqlite://data/broker.db",
        };
        std::fs::create_dir_all(self.dir.join("data"))?;
        let log = std::fs::File::create(self.dir.join("broker.log"))?;
        let child = std::process::Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", storage])
            .args(self.authentication.then_some("--authentication"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "while starting {} (set HEADROOM_BROKER_BIN: `scripts/stack up` and `source .stack/env`)",
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} within 20 s: {}",
                    self.bin.display(),
                    self.port,
                    std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The broker's log so far (its stderr), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// Kills the broker (SIGKILL: nothing is flushed on the way out).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker binary private brokers run: `HEADROOM_BROKER_BIN` (set by
/// `.stack/env`), else `HEADROOM_TANSU_BIN` (its former name), else
/// `nisshi` on PATH.
pub fn broker_bin() -> PathBuf {
    ["HEADROOM_BROKER_BIN", "HEADROOM_TANSU_BIN"]
        .into_iter()
        .find_map(std::env::var_os)
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "nisshi".into())
}

/// A durable broker that requires SASL SCRAM-SHA-512 from `user` with
/// `password`, behind a TLS front with the PKI's server certificate (no
/// client certificates): a SASL_SSL broker. The user is created before
/// authentication is switched on, then the broker restarts.
pub fn sasl_ssl_broker(
    pki: &TestPki,
    user: &str,
    password: &str,
) -> anyhow::Result<(PrivateBroker, TlsFront)> {
    let mut broker = PrivateBroker::start_durable()?;
    broker.create_user(user, password)?;
    broker.stop();
    let tls_port = free_port()?;
    broker.set_next_start(true, tls_port);
    broker.start_again()?;
    let front = TlsFront::start(tls_port, &broker.address(), pki, false)?;
    Ok((broker, front))
}

/// librdkafka settings (`key=value`) for SASL_SSL with SCRAM-SHA-512,
/// trusting the CA in `ca`.
pub fn sasl_ssl_options(user: &str, password: &str, ca: &Path) -> Vec<String> {
    vec![
        "security.protocol=SASL_SSL".to_string(),
        "sasl.mechanism=SCRAM-SHA-512".to_string(),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
        format!("ssl.ca.location={}", ca.display()),
    ]
}

/// Sets `key=value` librdkafka settings on a client configuration.
pub fn apply_options(config: &mut rdkafka::ClientConfig, options: &[String]) {
    for option in options {
        let (key, value) = option.split_once('=').expect("key=value");
        config.set(key, value);
    }
}

/// A TLS listener on 127.0.0.1 that forwards each connection, decrypted,
/// to a plaintext broker: Kafka over SSL against a broker that speaks only
/// plaintext. Stops on drop.
#[derive(Debug)]
pub struct TlsFront {
    /// Port it listens on.
    pub port: u16,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    cancel: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Listens on `port` with the PKI's server certificate and forwards to
    /// `upstream`. With `mutual`, a client must present a certificate the
    /// PKI's CA signed.
    pub fn start(port: u16, upstream: &str, pki: &TestPki, mutual: bool) -> anyhow::Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(pki, mutual)?));
        let listener = StdListener::bind(("127.0.0.1", port))
            .with_context(|| format!("while binding the TLS front to port {port}"))?;
        listener.set_nonblocking(true)?;
        let cancel = CancellationToken::new();
        let upstream = upstream.to_string();
        let stop = cancel.clone();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused_here = refused.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let (socket, _) = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                    };
                    let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                    let refused = refused_here.clone();
                    tokio::spawn(async move {
                        let mut tls = match acceptor.accept(socket).await {
                            Ok(tls) => tls,
                            Err(e) => {
                                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::debug!(error = %e, "TLS front: handshake failed");
                                return;
                            }
                        };
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    });
                }
            });
        });
        Ok(Self {
            port,
            refused,
            cancel,
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Handshakes that failed so far (either side refused the other).
    pub fn failed_handshakes(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("while reading certificates from {}", path.display()))
}

fn server_config(pki: &TestPki, mutual: bool) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let certs = pem_certs(&pki.server_cert)?;
    let key = PrivateKeyDer::from_pem_file(&pki.server_key)
        .with_context(|| format!("while reading {}", pki.server_key.display()))?;
    let config = if mutual {
        let mut roots = RootCertStore::empty();
        for cert in pem_certs(&pki.ca)? {
            roots.add(cert)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?
    } else {
        builder.with_no_client_auth().with_single_cert(certs, key)?
    };
    Ok(config)
}
