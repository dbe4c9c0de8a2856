//! What the market-data integration tests share: a real nats-server, the real
//! binary, and a plain NATS client.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::{Client, Subscriber};
use futures::StreamExt;
use moonbus_common::testing::{ChildGuard, NatsServer};
use moonbus_common::ErrorReply;
use serde::de::DeserializeOwned;

pub const BINARY: &str = env!("CARGO_BIN_EXE_rust-market-data");
pub const WAIT: Duration = Duration::from_secs(10);
/// Each symbol ticks every 20 ms.
const FAST_TICKS: &str = "20";
/// The service's API endpoints (price, prices, history, monitor x3, version).
const ENDPOINTS: usize = 7;

pub struct Running {
    pub server: NatsServer,
    pub service: ChildGuard,
    pub client: Client,
}

/// Starts nats-server and the service (sim at 20 ms per symbol, no metrics
/// endpoint); subscribes to `subjects` before the first tick, and returns once the
/// service answers requests.
pub async fn start(subjects: &[&str]) -> (Running, Vec<Subscriber>) {
    start_with(subjects, &[]).await
}

/// Like `start`, with more `MOONBUS__...` settings (they win over the defaults).
pub async fn start_with(subjects: &[&str], env: &[(&str, &str)]) -> (Running, Vec<Subscriber>) {
    let server = NatsServer::start();
    let client = async_nats::connect(&server.url).await.expect("connect");
    let mut subscribers = Vec::new();
    for subject in subjects {
        subscribers.push(
            client
                .subscribe(subject.to_string())
                .await
                .expect("subscribe"),
        );
    }
    client.flush().await.expect("flush");
    let service = spawn(&server.url, env);
    wait_serving(&client).await;
    (
        Running {
            server,
            service,
            client,
        },
        subscribers,
    )
}

/// The binary on `url` with the tests' settings, `env` winning.
pub fn spawn(url: &str, env: &[(&str, &str)]) -> ChildGuard {
    let mut settings = vec![
        ("MOONBUS__MARKET_DATA__TICK_INTERVAL_MS", FAST_TICKS),
        ("MOONBUS__MARKET_DATA__METRICS_ADDR", "\"\""),
    ];
    settings.retain(|(key, _)| !env.iter().any(|(k, _)| k == key));
    settings.extend_from_slice(env);
    ChildGuard::spawn(BINARY, url, &settings)
}

/// Polls until the service lists its endpoints (before, no responders).
pub async fn wait_serving(client: &Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(info) = client.request("$SRV.INFO.market-data", "".into()).await {
            let info: serde_json::Value = serde_json::from_slice(&info.payload).expect("JSON info");
            if info["endpoints"]
                .as_array()
                .is_some_and(|e| e.len() == ENDPOINTS)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "market-data did not start answering"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn next<T: DeserializeOwned>(subscriber: &mut Subscriber) -> T {
    let message = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("a message in time")
        .expect("subscription open");
    serde_json::from_slice(&message.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&message.payload)))
}

pub async fn request(client: &Client, subject: &str, body: &str) -> serde_json::Value {
    let reply = tokio::time::timeout(
        WAIT,
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

pub async fn ask<T: DeserializeOwned>(client: &Client, subject: &str, body: &str) -> T {
    let value = request(client, subject, body).await;
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}

pub async fn error_code(client: &Client, subject: &str, body: &str) -> (String, String) {
    let reply: ErrorReply = ask(client, subject, body).await;
    (reply.error.code, reply.error.message)
}

/// A file in a fresh temp dir (removed with the dir at the end of the test).
pub struct TempFile {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "md-test-{}-{}",
            std::process::id(),
            moonbus_common::now_ns()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        Self { dir, path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
