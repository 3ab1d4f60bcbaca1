//! Logging: human-readable lines on stderr, filtered by RUST_LOG (default `info`).

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal; logs collected from a pipe stay plain.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
