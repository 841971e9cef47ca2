//! Log setup for every binary: `tracing-subscriber` with an env filter
//! (`HEADROOM_LOG`, then `RUST_LOG`, default `info`), text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the global subscriber for a server (default filter `info`,
/// PostgreSQL's notices at `warn`: a migration run again says "relation …
/// already exists, skipping" at INFO, which is noise to an operator).
/// Logs go to stderr so stdout stays free for command output (tables,
/// JSON). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with(format, "info,sqlx::postgres::notice=warn");
}

/// [`init`] with another default filter, for command-line tools that stay
/// quiet unless asked (`HEADROOM_LOG` or `RUST_LOG` still win).
pub fn init_with(format: LogFormat, default_filter: &str) {
    let filter = std::env::var("HEADROOM_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
}
