//! NATS plumbing shared by the Rust services: connect with the service's own
//! credentials, the JetStream streams, JSON encode/decode, error events and replies,
//! and the NATS service API (`$SRV.PING/INFO/STATS`).

use anyhow::{Context, Result};
use async_nats::service::{Service, ServiceExt};
use async_nats::Client;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::messages::{now_ns, ErrorEvent, ErrorReply};
use crate::subjects;

/// The reply-inbox prefix of a NATS user: `_INBOX.<user>`. Each user may subscribe
/// only its own (proto/nats/moonbus.conf), so nobody reads replies meant for another.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// Connect as `NATS_USER` / `NATS_PASSWORD` to `NATS_URL` (default localhost:4222).
/// With `NATS_CA` (a PEM CA file) TLS is required and the server's certificate must
/// chain to that CA, and to it only (`make run` with `[nats] tls = true` sets it).
/// Retries the first connect and reconnects forever: a bus restart is not fatal.
/// A NATS cluster: `NATS_URL` lists every seed, comma-separated (as the `nats` CLI reads
/// it); the client connects to one and fails over to the others ([`server_addrs`]).
/// (async-nats itself logs every connection event: connected, disconnected, ...)
pub async fn connect(service: &str) -> Result<Client> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let servers = server_addrs(&url)?;
    let mut options = async_nats::ConnectOptions::new()
        .name(service)
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let Some(ca) = std::env::var_os("NATS_CA").filter(|ca| !ca.is_empty()) {
        let ca = std::path::PathBuf::from(ca);
        anyhow::ensure!(ca.is_file(), "NATS_CA: no CA file at {}", ca.display());
        options = options.add_root_certificates(ca).require_tls(true);
    }
    if let (Ok(user), Ok(password)) = (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD")) {
        options = options
            .custom_inbox_prefix(inbox_prefix(&user))
            .user_and_password(user, password);
    }
    let client = options
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    tracing::info!(%url, "connected to NATS");
    Ok(client)
}

/// The servers of a `NATS_URL`: one URL, or a cluster's seeds separated by commas
/// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`); services/common/bus.py `server_urls`
/// reads it alike.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse()
                .with_context(|| format!("NATS_URL: bad server URL {u:?}"))
        })
        .collect::<Result<Vec<async_nats::ServerAddr>>>()?;
    anyhow::ensure!(!servers.is_empty(), "NATS_URL names no server");
    Ok(servers)
}

/// Serialize a message for the wire.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(message).expect("bus messages always serialize"))
}

/// Parse a message strictly; the error text is fit to send back to whoever sent it.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> std::result::Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| shorten(&e.to_string()))
}

/// Longest error text put in a reply, a report's reason or an error event: serde repeats
/// an unknown field or variant whole, and a reason as long as the order it rejects would
/// not fit in EXEC (64 KiB a message) -- the order could never be recorded, nor acked.
pub const MAX_REASON_CHARS: usize = 500;

/// `text` cut to MAX_REASON_CHARS characters, marked when cut.
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_REASON_CHARS {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX_REASON_CHARS - 1).collect();
    format!("{head}…")
}

/// The body of an `{"error": {"code", "message"}}` reply.
pub fn error_reply(code: &str, message: impl Into<String>) -> Bytes {
    encode(&ErrorReply::new(code, message))
}

/// Publishes rejected input on `errors.<service>` so it can be seen and debugged.
#[derive(Clone)]
pub struct ErrorSink {
    client: Client,
    service: String,
    subject: String,
}

impl ErrorSink {
    pub fn new(client: Client, service: &str) -> Self {
        Self {
            client,
            service: service.into(),
            subject: subjects::errors(service),
        }
    }

    pub async fn report(&self, subject: &str, reason: &str, payload: &[u8]) {
        tracing::warn!(subject, reason, "rejected input");
        let event = ErrorEvent {
            service: self.service.clone(),
            subject: subject.chars().take(256).collect(),
            reason: reason.chars().take(1000).collect(),
            excerpt: excerpt(payload),
            ts: now_ns(),
        };
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), encode(&event))
            .await
        {
            tracing::error!(error = %e, "could not publish error event");
        }
    }
}

/// The first 200 characters of a payload, lossily decoded: enough to recognise it.
pub fn excerpt(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(800)])
        .chars()
        .take(200)
        .collect()
}

/// Register on the NATS service API so `nats micro ls` and `moon status` see us.
pub async fn start_service(client: &Client, name: &str, description: &str) -> Result<Service> {
    client
        .service_builder()
        .description(description)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("starting NATS service {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decode_error_is_never_longer_than_max_reason_chars() {
        let field = "x".repeat(60_000);
        let payload = format!(r#"{{"client_order_id":"a","{field}":1}}"#);
        let error = decode::<crate::OrderRequest>(payload.as_bytes()).unwrap_err();
        assert_eq!(error.chars().count(), MAX_REASON_CHARS);
        assert!(
            error.starts_with("unknown field `xxx") && error.ends_with('…'),
            "{error}"
        );
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn nats_url_names_one_server_or_a_clusters_seeds() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let seeds = server_addrs("nats://a:4222, nats://b:4223,tls://c:4224").unwrap();
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[1].port(), 4223);
        assert!(server_addrs(" , ").is_err());
        assert!(server_addrs("nats://a:4222,nats://b:notaport").is_err());
    }
}
