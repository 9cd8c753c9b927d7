//! Logs on stderr: human-readable lines by default, one JSON object per line with
//! `--log-format json` (or `log_format = "json"`). `RUST_LOG` overrides the level filter.

use serde::{Deserialize, Serialize};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (fields flattened: `message`, `user`, `bytes_in`, …).
    Json,
}

/// Logs to stderr; `default` is the filter when RUST_LOG is not set (`None`: no logs).
pub fn init(format: LogFormat, default: Option<String>) {
    use tracing_subscriber::EnvFilter;
    let filter = match (EnvFilter::try_from_default_env(), default) {
        (Ok(filter), _) => filter,
        (Err(_), Some(default)) => EnvFilter::new(default),
        (Err(_), None) => return,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Flattened, so that a session-end line reads `{"message":"session ended","user":…}`
        // rather than nesting every field under `fields`.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
