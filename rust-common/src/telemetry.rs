//! Logging set-up and the shutdown signal, the same for every binary.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Human-readable logs by default; `MOONBUS_LOG_FORMAT=json` for one JSON object per line.
/// Level: `MOONBUS_LOG_LEVEL` (the Python services' variable: DEBUG, INFO, WARNING, ERROR,
/// CRITICAL, any case; default INFO), unless `RUST_LOG` is set: the more detailed
/// override (per-module directives, e.g. `info,async_nats=debug`). Logs go to stderr.
pub fn init_logging() {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let moonbus = std::env::var("MOONBUS_LOG_LEVEL").ok();
    let directives = filter_directives(rust_log.as_deref(), moonbus.as_deref());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
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

/// The tracing filter: `RUST_LOG` if set, else the level of `MOONBUS_LOG_LEVEL` in
/// tracing's words (WARNING = warn, CRITICAL = error), else `info`.
fn filter_directives(rust_log: Option<&str>, moonbus_level: Option<&str>) -> String {
    if let Some(directives) = rust_log {
        return directives.to_string();
    }
    let level = moonbus_level.unwrap_or("").trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => level,
        "warning" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        _ => "info".into(),
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

#[cfg(test)]
mod tests {
    use super::filter_directives;

    #[test]
    fn moonbus_log_level_is_read_and_rust_log_overrides_it() {
        assert_eq!(filter_directives(None, None), "info");
        assert_eq!(filter_directives(None, Some("DEBUG")), "debug");
        assert_eq!(filter_directives(None, Some("warning")), "warn");
        assert_eq!(filter_directives(None, Some("CRITICAL")), "error");
        assert_eq!(filter_directives(None, Some("nonsense")), "info");
        assert_eq!(
            filter_directives(Some("warn,async_nats=debug"), Some("DEBUG")),
            "warn,async_nats=debug"
        );
    }
}
