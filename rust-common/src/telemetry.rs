//! Logging set-up and the shutdown signal, the same for every binary.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Human-readable logs by default; `MOONBUS_LOG_FORMAT=json` for one JSON object per line.
/// Level from `RUST_LOG` (default `info`). Logs go to stderr.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Colours only on a terminal: under `make run` the launcher labels the lines.
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("MOONBUS_LOG_FORMAT").as_deref() == Ok("json") {
        builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .init();
    } else {
        builder.compact().with_writer(std::io::stderr).init();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
