//! What the benchmark drivers share: arguments, the NATS connection, the clock, and the
//! echo responder whose round trip is the bus baseline.
//! The drivers are run by bench/<name>.py (`cargo bench -p rust-execution --bench <name>`),
//! which starts nats-server and the services first and reads the JSON the driver prints.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::StreamExt;

/// Where the echo responder (the bus baseline) answers: `ECHO_USER` (market-data) may
/// subscribe there and the operator may ask.
pub const ECHO_SUBJECT: &str = "md.api.bench_echo";

/// `--key value` pairs after the program name (cargo adds a bare `--bench`: ignored).
pub struct Args(HashMap<String, String>);

impl Args {
    pub fn parse() -> Result<Self> {
        let mut pairs = HashMap::new();
        let mut words = std::env::args().skip(1).filter(|a| a != "--bench");
        while let Some(key) = words.next() {
            let name = key
                .strip_prefix("--")
                .with_context(|| format!("expected --key value, got {key:?}"))?;
            let value = words
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            pairs.insert(name.to_string(), value);
        }
        Ok(Self(pairs))
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|e| anyhow::anyhow!("--{name} {text:?}: {e}")),
        }
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
}

/// Connect as `<prefix>USER` / `<prefix>PASSWORD` to `NATS_URL` (prefix `NATS_` is the
/// operator the bench hands over; other users get their own prefix).
pub async fn connect(prefix: &str) -> Result<async_nats::Client> {
    let url = std::env::var("NATS_URL").context("NATS_URL is not set")?;
    let user = std::env::var(format!("{prefix}USER")).with_context(|| format!("{prefix}USER"))?;
    let password =
        std::env::var(format!("{prefix}PASSWORD")).with_context(|| format!("{prefix}PASSWORD"))?;
    async_nats::ConnectOptions::new()
        .name("bench")
        .custom_inbox_prefix(moonbus_common::bus::inbox_prefix(&user))
        .user_and_password(user, password)
        .connect(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Wall-clock nanoseconds, comparable with the `ts` fields the services stamp.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Until the echo responder answers (it is a separate process that may still be starting).
pub async fn wait_for_echo(client: &async_nats::Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = client.request(ECHO_SUBJECT, "ping".into());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), asked).await {
            if !reply.payload.is_empty() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the echo responder did not answer");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The echo responder: answers every request with its own payload.
pub async fn echo() -> Result<()> {
    let client = connect("ECHO_").await?;
    let mut requests = client.subscribe(ECHO_SUBJECT).await?;
    while let Some(message) = requests.next().await {
        if let Some(reply) = message.reply {
            client.publish(reply, message.payload).await?;
        }
    }
    Ok(())
}

/// The echo responder's process, killed when the driver is done.
pub struct EchoProcess(Child);

impl EchoProcess {
    /// This binary again, with `--role echo`.
    pub fn spawn() -> Result<Self> {
        let me = std::env::current_exe().context("finding this binary")?;
        let child = Command::new(me)
            .args(["--role", "echo"])
            .spawn()
            .context("starting the echo responder")?;
        Ok(Self(child))
    }

    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
