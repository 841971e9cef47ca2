//! TLS for every gRPC server and client. A server given `--tls-cert` and
//! `--tls-key` speaks TLS only; with `--tls-client-ca` it also requires
//! client certificates signed by that CA (mutual TLS). A client uses TLS
//! for `https://` URLs, trusting `--tls-ca` (or the system's roots) and
//! presenting `--tls-client-cert`/`--tls-client-key` when given.
//!
//! Errors name the files, never their contents.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read the {what} {path}: {reason}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("the {what} {path} holds no PEM {kind}")]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What was expected.
        kind: &'static str,
    },
    /// The URL or the TLS settings were refused by the transport.
    #[error("{context}: {source}")]
    Transport {
        /// What was being set up.
        context: String,
        /// The transport's reason.
        source: tonic::transport::Error,
    },
}

fn read_pem(what: &'static str, path: &Path, kind: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let marker = match kind {
        "certificate" => "-----BEGIN CERTIFICATE-----",
        _ => "PRIVATE KEY-----",
    };
    if !String::from_utf8_lossy(&pem).contains(marker) {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(pem)
}

/// A certificate chain and its key, read from PEM files.
fn identity(
    cert: &Path,
    key: &Path,
    cert_what: &'static str,
    key_what: &'static str,
) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read_pem(cert_what, cert, "certificate")?,
        read_pem(key_what, key, "private key")?,
    ))
}

/// A server's TLS settings; flattened into [`GrpcOptions`](crate::grpc::GrpcOptions).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTls {
    /// PEM certificate chain; with --tls-key the server speaks TLS only.
    #[arg(long = "tls-cert", env = "HEADROOM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "HEADROOM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(
        long = "tls-client-ca",
        env = "HEADROOM_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// The transport's TLS configuration; `None` for plaintext.
    pub fn config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut config =
            ServerTlsConfig::new().identity(identity(cert, key, "TLS certificate", "TLS key")?);
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem(
                "client CA",
                ca,
                "certificate",
            )?));
        }
        Ok(Some(config))
    }
}

/// A client's TLS settings.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// PEM CA bundle that signed the servers' certificates, for https://
    /// URLs [default: the system's roots].
    #[arg(long = "tls-ca", env = "HEADROOM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    #[arg(
        long = "tls-client-cert",
        env = "HEADROOM_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(
        long = "tls-client-key",
        env = "HEADROOM_TLS_CLIENT_KEY",
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTls {
    /// Settings from the `HEADROOM_TLS_CA`, `HEADROOM_TLS_CLIENT_CERT` and
    /// `HEADROOM_TLS_CLIENT_KEY` environment variables.
    pub fn from_env() -> Self {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            tls_ca: path("HEADROOM_TLS_CA"),
            tls_client_cert: path("HEADROOM_TLS_CLIENT_CERT"),
            tls_client_key: path("HEADROOM_TLS_CLIENT_KEY"),
        }
    }

    /// An endpoint for `url`: TLS with these settings for `https://`,
    /// plaintext for `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|source| TlsError::Transport {
                context: format!("bad URL {url:?}"),
                source,
            })?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.tls_ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read_pem(
                "TLS CA",
                ca,
                "certificate",
            )?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            config = config.identity(identity(
                cert,
                key,
                "TLS client certificate",
                "TLS client key",
            )?);
        }
        endpoint
            .tls_config(config)
            .map_err(|source| TlsError::Transport {
                context: format!("TLS for {url}"),
                source,
            })
    }
}
