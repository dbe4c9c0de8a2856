//! The JetStream state of moonbus and how the services use it without configuring it.
//!
//! The streams, the KV bucket and the durable consumers are data,
//! `proto/nats/jetstream.json` (the JetStream API's own JSON), created and updated only
//! by the `admin` user (services/common/streams.py `provision`): a user that may create a
//! consumer or update a stream can make the server publish on any subject (a push
//! consumer's deliver subject, a stream's republish), so no service may (SECURITY.md).
//! Services open what is provisioned; they read streams by batched direct gets
//! ([`DirectReader`]) and pull from their own durable.
//!
//! Where a service runs against a server without permissions (the crates' own tests),
//! `open_*` creates a missing stream or consumer from the same file; under moonbus.conf
//! that create is refused and the error says to provision first.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{Client, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;

use crate::subjects;

/// proto/nats/jetstream.json, compiled in so a binary and its file cannot disagree.
pub const SPEC_JSON: &str = include_str!("../../proto/nats/jetstream.json");

#[derive(Deserialize)]
struct Spec {
    streams: Vec<stream::Config>,
    consumers: Vec<ConsumerSpec>,
}

#[derive(Deserialize)]
struct ConsumerSpec {
    stream_name: String,
    config: consumer::pull::Config,
}

fn spec() -> Spec {
    serde_json::from_str(SPEC_JSON).expect("proto/nats/jetstream.json is valid (tested)")
}

/// The provisioned configuration of stream `name` (ORDERS, EXEC, KV_moonbus).
pub fn stream_config(name: &str) -> Result<stream::Config> {
    spec()
        .streams
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("no stream {name} in proto/nats/jetstream.json"))
}

/// The provisioned configuration of durable consumer `name` on `stream`.
pub fn consumer_config(stream: &str, name: &str) -> Result<consumer::pull::Config> {
    spec()
        .consumers
        .into_iter()
        .find(|c| c.stream_name == stream && c.config.durable_name.as_deref() == Some(name))
        .map(|c| c.config)
        .ok_or_else(|| anyhow!("no consumer {stream}/{name} in proto/nats/jetstream.json"))
}

const NOT_PROVISIONED: &str =
    "is it provisioned? `make run`, the compose `provision` service and the test fixtures do it as the admin user";

/// Open stream `name`; create it from the spec where this user may (tests only).
pub async fn open_stream(js: &jetstream::Context, name: &str) -> Result<jetstream::stream::Stream> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(stream),
        Err(get) => js
            .create_stream(stream_config(name)?)
            .await
            .map_err(|create| anyhow!("stream {name} cannot be opened ({get}) nor created ({create}): {NOT_PROVISIONED}")),
    }
}

/// Open the KV bucket `moonbus` (provisioned as the stream KV_moonbus).
pub async fn open_kv(js: &jetstream::Context) -> Result<kv::Store> {
    let name = format!("KV_{}", subjects::KV_BUCKET);
    open_stream(js, &name).await?;
    js.get_key_value(subjects::KV_BUCKET)
        .await
        .with_context(|| format!("opening KV bucket {}", subjects::KV_BUCKET))
}

/// Open this service's durable pull consumer `name` on `stream`; create it from the spec,
/// changed by `adjust`, where this user may (tests only). Under moonbus.conf no service may
/// create or change a consumer: a pull consumer cannot become a push one, but one given an
/// inactive threshold would vanish and could be created again as a push consumer.
pub async fn open_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    adjust: impl FnOnce(&mut consumer::pull::Config),
) -> Result<jetstream::consumer::Consumer<consumer::pull::Config>> {
    let stream_name = stream.cached_info().config.name.clone();
    match stream.get_consumer(name).await {
        Ok(consumer) => Ok(consumer),
        Err(get) => {
            let mut config = consumer_config(&stream_name, name)?;
            adjust(&mut config);
            stream.create_consumer(config).await.map_err(|create| {
                anyhow!("consumer {stream_name}/{name} cannot be opened ({get}) nor created ({create}): {NOT_PROVISIONED}")
            })
        }
    }
}

/// The settings of moonbus.toml the provisioning applies on top of the spec: execution's
/// `ack_wait_ms` and `max_in_flight` become its consumer's `ack_wait` and `max_ack_pending`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecutionSettings {
    pub ack_wait_ms: Option<u64>,
    pub max_in_flight: Option<u64>,
}

/// Everything of moonbus.toml the provisioning applies: execution's consumer settings,
/// the `[jetstream.<STREAM>]` limits (max_bytes, max_msg_size in bytes, by stream name)
/// and `[jetstream] replicas` (every stream's `num_replicas`; None = the spec's R1).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub execution: ExecutionSettings,
    pub limits: BTreeMap<String, BTreeMap<String, u64>>,
    pub replicas: Option<u64>,
}

/// The stream settings moonbus.toml may override per stream (`[jetstream.<STREAM>]`).
pub const STREAM_LIMITS: [&str; 2] = ["max_bytes", "max_msg_size"];
/// A message is never larger than the server's max_payload (proto/nats/moonbus.conf).
pub const MAX_PAYLOAD: u64 = 1024 * 1024;
/// JetStream keeps at most 5 copies of a stream.
pub const MAX_REPLICAS: i64 = 5;

impl Settings {
    /// The provisioning settings of a config, validated exactly as services/common/streams.py
    /// `wanted_state` validates them (the same errors for the same nonsense).
    pub fn from_config(config: &crate::config::Config) -> Result<Self> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Execution {
            ack_wait_ms: Option<u64>,
            max_in_flight: Option<u64>,
        }
        let execution: Execution = config.section("execution")?;
        let mut section: toml::Table = config
            .section("jetstream")
            .context("[jetstream] must be a table of [jetstream.<STREAM>] tables")?;
        let replicas = section
            .remove("replicas")
            .map(|v| replicas(&v))
            .transpose()?;
        Ok(Self {
            execution: ExecutionSettings {
                ack_wait_ms: execution.ack_wait_ms,
                max_in_flight: execution.max_in_flight,
            },
            limits: stream_limits(&section)?,
            replicas,
        })
    }
}

/// `[jetstream] replicas`: how many servers of a cluster keep each stream, 1 to 5 (3 on
/// a 3-node cluster: one node may be lost); as streams.py `replicas`.
pub fn replicas(value: &toml::Value) -> Result<u64> {
    match value.as_integer() {
        Some(n) if (1..=MAX_REPLICAS).contains(&n) => Ok(n as u64),
        _ => bail!("[jetstream] replicas: {value} is not a number of copies from 1 to {MAX_REPLICAS} (3 on a 3-node cluster)"),
    }
}

/// A size in bytes: a positive integer, or a string such as "64KiB", "1GiB", "500MB"
/// (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000), as streams.py `parse_size`.
pub fn parse_size(value: &toml::Value, at: &str) -> Result<u64> {
    let bad =
        || anyhow!("{at}: {value} is not a size (e.g. 65536, \"64KiB\", \"1GiB\", \"500MB\")");
    let size: i128 = match value {
        toml::Value::Integer(n) => (*n).into(),
        toml::Value::String(text) => {
            let text = text.trim();
            let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (number, unit) = text.split_at(digits);
            let unit: i128 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" => 1000,
                "mb" => 1000_i128.pow(2),
                "gb" => 1000_i128.pow(3),
                "tb" => 1000_i128.pow(4),
                "kib" => 1 << 10,
                "mib" => 1 << 20,
                "gib" => 1 << 30,
                "tib" => 1 << 40,
                _ => return Err(bad()),
            };
            let number: i128 = number.parse().map_err(|_| bad())?;
            number.checked_mul(unit).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    if size <= 0 || size >= 1_i128 << 63 {
        bail!("{at}: {value} must be more than 0 bytes (stores are bounded) and below 2^63");
    }
    Ok(size as u64)
}

/// moonbus.toml's `[jetstream.<STREAM>]` tables, validated, by the spec's stream name
/// (matched case-insensitively, as environment overrides are lower case).
pub fn stream_limits(section: &toml::Table) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let names: Vec<String> = spec().streams.into_iter().map(|s| s.name).collect();
    let mut limits = BTreeMap::new();
    for (key, table) in section {
        let Some(name) = names.iter().find(|n| n.eq_ignore_ascii_case(key)) else {
            bail!(
                "[jetstream.{key}]: no such stream (streams: {})",
                names.join(", ")
            );
        };
        let Some(table) = table.as_table() else {
            bail!("[jetstream.{key}] must be a table");
        };
        let mut these = BTreeMap::new();
        for (setting, value) in table {
            if !STREAM_LIMITS.contains(&setting.as_str()) {
                bail!(
                    "[jetstream.{key}]: unknown setting {setting:?} (settable: {})",
                    STREAM_LIMITS.join(", ")
                );
            }
            these.insert(
                setting.clone(),
                parse_size(value, &format!("[jetstream.{key}] {setting}"))?,
            );
        }
        if these
            .get("max_msg_size")
            .is_some_and(|&size| size > MAX_PAYLOAD)
        {
            bail!("[jetstream.{key}] max_msg_size must be at most the server's max_payload ({MAX_PAYLOAD} bytes)");
        }
        limits.insert(name.clone(), these);
    }
    Ok(limits)
}

/// Create what is missing and update what differs, streams then consumers, exactly as
/// services/common/streams.py `provision` does (the same spec, the same comparison of the
/// spec's keys with the live config, unmanaged settings kept); returns each change as
/// "<name>: created" or "<name>: <field>: <old> -> <new>". Needs the `admin` user's rights
/// (or a server without permissions); used by the crates' tests, checked against the
/// Python side by rust-risk/tests/provision.rs.
pub async fn provision(client: &Client, execution: ExecutionSettings) -> Result<Vec<String>> {
    provision_with(
        client,
        &Settings {
            execution,
            ..Settings::default()
        },
    )
    .await
}

/// [`provision`] with every setting of moonbus.toml ([`Settings::from_config`]).
pub async fn provision_with(client: &Client, settings: &Settings) -> Result<Vec<String>> {
    let execution = settings.execution;
    let spec: serde_json::Value = serde_json::from_str(SPEC_JSON)?;
    let mut changes = Vec::new();
    for spec_stream in spec["streams"].as_array().into_iter().flatten() {
        let mut wanted = spec_stream.clone();
        let name = wanted["name"].as_str().unwrap_or_default().to_string();
        for (setting, value) in settings.limits.get(&name).into_iter().flatten() {
            wanted[setting.as_str()] = (*value).into();
        }
        if let Some(replicas) = settings.replicas {
            wanted["num_replicas"] = replicas.into();
        }
        let (max_bytes, max_msg_size) = (
            wanted["max_bytes"].as_u64(),
            wanted["max_msg_size"].as_u64(),
        );
        if let (Some(bytes), Some(size)) = (max_bytes, max_msg_size) {
            if size > bytes {
                bail!("stream {name}: max_msg_size {size} is larger than max_bytes {bytes}");
            }
        }
        let wanted = &wanted;
        let info = api(client, &format!("$JS.API.STREAM.INFO.{name}"), None).await?;
        let (subject, body, what) = if info.get("error").is_some() {
            if info["error"]["err_code"] != 10059 {
                bail!("stream {name}: {}", info["error"]["description"]);
            }
            (
                format!("$JS.API.STREAM.CREATE.{name}"),
                wanted.clone(),
                vec!["created".to_string()],
            )
        } else {
            let what = differs(&info["config"], wanted);
            if what.is_empty() {
                continue;
            }
            let stored = info["state"]["bytes"].as_u64().unwrap_or(0);
            if wanted["discard"] == "old" && max_bytes.is_some_and(|bytes| bytes < stored) {
                // The server would delete the oldest messages to fit: reports lost. (A discard
                // new stream keeps them and refuses new ones until it has room.)
                bail!(
                    "stream {name}: max_bytes {} is below the {stored} bytes it stores; shrinking it would delete stored messages",
                    max_bytes.unwrap_or_default()
                );
            }
            let mut merged = info["config"].clone();
            merge(&mut merged, wanted);
            (format!("$JS.API.STREAM.UPDATE.{name}"), merged, what)
        };
        let made = api(client, &subject, Some(&body)).await?;
        if made.get("error").is_some() {
            bail!("stream {name}: {}", made["error"]["description"]);
        }
        changes.extend(what.into_iter().map(|w| format!("{name}: {w}")));
    }
    for consumer in spec["consumers"].as_array().into_iter().flatten() {
        let stream = consumer["stream_name"].as_str().unwrap_or_default();
        let mut wanted = consumer["config"].clone();
        let name = wanted["durable_name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name == "execution" {
            if let Some(ms) = execution.ack_wait_ms {
                wanted["ack_wait"] = (ms.saturating_mul(1_000_000)).into();
            }
            if let Some(n) = execution.max_in_flight {
                wanted["max_ack_pending"] = n.into();
            }
        }
        let info = api(
            client,
            &format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
            None,
        )
        .await?;
        let what = if info.get("error").is_some() {
            vec!["created".to_string()]
        } else {
            differs(&info["config"], &wanted)
        };
        if what.is_empty() {
            continue;
        }
        let body = serde_json::json!({"stream_name": stream, "config": wanted});
        let made = api(
            client,
            &format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
            Some(&body),
        )
        .await?;
        if made.get("error").is_some() {
            bail!("consumer {stream}/{name}: {}", made["error"]["description"]);
        }
        changes.extend(what.into_iter().map(|w| format!("{stream}/{name}: {w}")));
    }
    Ok(changes)
}

/// The spec's keys whose live value differs, as "<field>: <old> -> <new>".
fn differs(live: &serde_json::Value, wanted: &serde_json::Value) -> Vec<String> {
    wanted
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.as_str() != "$comment" && live.get(k.as_str()) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}: {} -> {v}",
                live.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}

fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in from {
            into.insert(k.clone(), v.clone());
        }
    }
}

async fn api(
    client: &Client,
    subject: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_string(), payload),
    )
    .await
    .map_err(|_| anyhow!("{subject}: no answer within 5 s"))?
    .with_context(|| subject.to_string())?;
    serde_json::from_slice(&reply.payload).with_context(|| format!("{subject}: not JSON"))
}

/// One stored message read by a direct get.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
}

/// Reads a stream's messages on `filter` in sequence order by batched direct gets
/// (`$JS.API.DIRECT.GET.<stream>` with `batch` and `next_by_subj`): no consumer, nothing
/// acked. Reads up to the last matching message stored when the first batch is answered.
pub struct DirectReader {
    client: Client,
    stream: String,
    filter: String,
    next_sequence: u64,
    remaining: Option<u64>,
    in_batch: usize,
    requested: bool,
    inbox: Option<(String, Subscriber)>,
    batch: usize,
    timeout: Duration,
}

impl DirectReader {
    pub fn new(client: Client, stream: &str, filter: &str, from_sequence: u64) -> Self {
        Self {
            client,
            stream: stream.into(),
            filter: filter.into(),
            next_sequence: from_sequence.max(1),
            remaining: None,
            in_batch: 0,
            requested: false,
            inbox: None,
            batch: 512,
            timeout: Duration::from_secs(5),
        }
    }

    /// The sequence after the last message read.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The next message, or None once everything stored at the start has been read.
    pub async fn next(&mut self) -> Result<Option<StoredMessage>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            if !self.requested {
                self.request().await?;
            }
            let stream = self.stream.clone();
            let (_, subscriber) = self.inbox.as_mut().expect("request() opened the inbox");
            let message = tokio::time::timeout(self.timeout, subscriber.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "stream {stream} did not answer a direct get within {:?}",
                        self.timeout
                    )
                })?
                .ok_or_else(|| anyhow!("direct get reply subscription of {stream} closed"))?;
            if let Some(status) = message.status {
                match status.as_u16() {
                    // End of a batch: ask for the next one, unless this one was empty.
                    204 => {
                        self.requested = false;
                        if self.in_batch == 0 {
                            self.remaining = Some(0);
                        }
                        continue;
                    }
                    404 => {
                        self.remaining = Some(0);
                        return Ok(None);
                    }
                    code => bail!(
                        "cannot read stream {stream}: {code} {}",
                        message.description.unwrap_or_default()
                    ),
                }
            }
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            let sequence: u64 = header("Nats-Sequence")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("direct get from {stream} without Nats-Sequence"))?;
            let subject = header("Nats-Subject").unwrap_or_default();
            if self.remaining.is_none() {
                let pending: u64 = header("Nats-Num-Pending")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                self.remaining = Some(pending.saturating_add(1));
            }
            self.remaining = self.remaining.map(|r| r.saturating_sub(1));
            self.in_batch += 1;
            self.next_sequence = sequence.saturating_add(1);
            return Ok(Some(StoredMessage {
                sequence,
                subject,
                payload: message.payload,
            }));
        }
    }

    async fn request(&mut self) -> Result<()> {
        if self.inbox.is_none() {
            let inbox = self.client.new_inbox();
            let subscriber = self
                .client
                .subscribe(inbox.clone())
                .await
                .context("subscribing to the direct get inbox")?;
            self.inbox = Some((inbox, subscriber));
        }
        let (inbox, _) = self.inbox.as_ref().expect("just opened");
        let body = serde_json::json!({
            "seq": self.next_sequence,
            "batch": self.batch,
            "next_by_subj": self.filter,
        });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox.clone(),
                Bytes::from(body.to_string()),
            )
            .await
            .with_context(|| format!("direct get from {}", self.stream))?;
        self.requested = true;
        self.in_batch = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_parses_and_names_every_stream_and_consumer() {
        for name in [
            "ORDERS",
            "EXEC",
            "KV_moonbus",
            "KV_sentiment",
            "KV_protections",
            "SNAPSHOTS",
            "DEADLETTER",
            "BARS",
            "OBJ_backtest-data",
        ] {
            let config = stream_config(name).unwrap();
            assert!(
                config.deny_delete && config.deny_purge && config.allow_direct,
                "{name}"
            );
            assert!(!config.allow_rollup, "{name}: rollups would purge");
        }
        let execution = consumer_config("ORDERS", "execution").unwrap();
        assert_eq!(execution.ack_policy, consumer::AckPolicy::Explicit);
        let risk = consumer_config("EXEC", "risk").unwrap();
        assert_eq!(risk.filter_subject, subjects::ALL_REPORTS);
        assert!(consumer_config("EXEC", "nobody").is_err());
    }

    fn limits(text: &str) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        stream_limits(&toml::from_str(text).unwrap())
    }

    #[test]
    fn stream_limits_are_sizes_of_known_streams() {
        let got = limits(
            "[ORDERS]\nmax_bytes = \"1GiB\"\nmax_msg_size = 4096\n[exec]\nmax_bytes = \"500 MB\"",
        )
        .unwrap();
        assert_eq!(got["ORDERS"]["max_bytes"], 1 << 30);
        assert_eq!(got["ORDERS"]["max_msg_size"], 4096);
        assert_eq!(
            got["EXEC"]["max_bytes"], 500_000_000,
            "names match case-insensitively"
        );
        for (text, says) in [
            ("[NOPE]\nmax_bytes = 1", "no such stream"),
            ("[ORDERS]\nmax_age = 1", "unknown setting"),
            ("[ORDERS]\nmax_bytes = 0", "more than 0 bytes"),
            ("[ORDERS]\nmax_bytes = -5", "more than 0 bytes"),
            ("[ORDERS]\nmax_bytes = \"1 parsec\"", "is not a size"),
            ("[ORDERS]\nmax_bytes = \"GiB\"", "is not a size"),
            ("[ORDERS]\nmax_bytes = 1.5", "is not a size"),
            ("[ORDERS]\nmax_bytes = \"99999999TiB\"", "below 2^63"),
            ("[ORDERS]\nmax_msg_size = \"2MiB\"", "max_payload"),
            ("ORDERS = 5", "must be a table"),
        ] {
            let error = format!("{:#}", limits(text).unwrap_err());
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn settings_come_from_the_config_and_its_overrides() {
        let config = crate::config::Config::from_parts(
            "[execution]\nack_wait_ms = 2000\n[jetstream.ORDERS]\nmax_bytes = \"8MiB\"",
            [(
                "MOONBUS__JETSTREAM__ORDERS__MAX_MSG_SIZE".to_string(),
                "\"1KiB\"".to_string(),
            )],
        )
        .unwrap();
        let settings = Settings::from_config(&config).unwrap();
        assert_eq!(settings.execution.ack_wait_ms, Some(2000));
        assert_eq!(settings.limits["ORDERS"]["max_bytes"], 8 << 20);
        assert_eq!(settings.limits["ORDERS"]["max_msg_size"], 1024);
        assert_eq!(
            settings.replicas, None,
            "R1 (the spec's) unless a deployment says"
        );
    }

    #[test]
    fn replicas_are_one_setting_for_every_stream() {
        let config = |text: &str, env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            Settings::from_config(&crate::config::Config::from_parts(text, env).unwrap())
        };
        let three = config(
            "[jetstream]\nreplicas = 3\n[jetstream.ORDERS]\nmax_bytes = 4096",
            &[],
        )
        .unwrap();
        assert_eq!(three.replicas, Some(3));
        assert_eq!(three.limits["ORDERS"]["max_bytes"], 4096);
        let env = config("", &[("MOONBUS__JETSTREAM__REPLICAS", "5")]).unwrap();
        assert_eq!(env.replicas, Some(5));
        for bad in ["0", "6", "-1", "\"3\"", "2.5", "true"] {
            let error = format!(
                "{:#}",
                config(&format!("[jetstream]\nreplicas = {bad}"), &[]).unwrap_err()
            );
            assert!(error.contains("[jetstream] replicas: "), "{bad}: {error}");
        }
    }
}
