//! The skeleton every Rust service runs in: what each does at start and at stop, so a
//! service's `main` holds only its own wiring.
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     service::exit(run().await)
//! }
//!
//! async fn run() -> Result<()> {
//!     // logs, moonbus.toml + MOONBUS__* overrides, NATS as the service's own user
//!     let (base, settings) = Base::start("risk", Settings::load).await?;
//!     base.serve_metrics(&settings.metrics_addr, || metrics::global().render()).await;
//!     // `$SRV.PING/INFO/STATS` and `risk.api.version`, answered alike by every service
//!     let api = base.register("what it does", subjects::RISK_VERSION).await?;
//!     // ... the service's own endpoints and tasks, until service::shutdown_signal() ...
//!     base.stop(Some(api)).await
//! }
//! ```
//!
//! Conventions shared with the Python side: the log level is `MOONBUS_LOG_LEVEL`
//! (`RUST_LOG` overrides it, see telemetry.rs); a metrics address of "" or port 0 is off.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use async_nats::service::endpoint::Endpoint;
use async_nats::service::Service;
use async_nats::Client;
use futures::StreamExt;

use crate::config::Config;
use crate::messages::{now_ns, VersionReply};
use crate::{bus, metrics, telemetry};

pub use crate::telemetry::shutdown_signal;

/// How long the last messages may take to leave at stop.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A started service: its name (the NATS user and service name), its connection and
/// when it started.
pub struct Base {
    pub name: &'static str,
    pub client: Client,
    /// ns since the epoch, as `VersionReply.started_ts` reports it.
    pub started_ts: u64,
}

impl Base {
    /// Logging on, the config loaded (`settings` picks and checks the service's
    /// sections), connected to NATS as `name`. A bad config stops here, before NATS.
    pub async fn start<S>(
        name: &'static str,
        settings: impl FnOnce(&Config) -> Result<S>,
    ) -> Result<(Self, S)> {
        let started_ts = now_ns();
        telemetry::init_logging();
        let settings = settings(&Config::load()?)?;
        let client = bus::connect(name).await?;
        let base = Self {
            name,
            client,
            started_ts,
        };
        Ok((base, settings))
    }

    /// Prometheus `GET /metrics` on `addr`; "" or port 0 = off (as `metrics_port = 0`
    /// of the Python agents). A port that cannot be bound is logged, not fatal.
    pub async fn serve_metrics(&self, addr: &str, render: fn() -> String) {
        metrics::serve(metrics::enabled_addr(addr), render).await;
    }

    /// Registers on the NATS service API (`$SRV.PING/INFO/STATS`, `nats micro ls`,
    /// `moon status`) with the `version` endpoint on `version_subject` (a
    /// `*.api.version` of subjects.rs) answered by a task of its own. Add the
    /// service's endpoints with [`endpoint`]; `stop` unsubscribes them all.
    pub async fn register(&self, description: &str, version_subject: &str) -> Result<Service> {
        let service = bus::start_service(&self.client, self.name, description).await?;
        let mut requests = endpoint(&service, "version", version_subject).await?;
        let reply = bus::encode(&VersionReply {
            service: self.name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_ts: self.started_ts,
        });
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Err(e) = request.respond(Ok(reply.clone())).await {
                    tracing::warn!(error = %e, "could not answer a version request");
                }
            }
        });
        Ok(service)
    }

    /// Graceful stop: the service API off (if not stopped already), what is in the
    /// client's buffer sent, the connection drained.
    pub async fn stop(self, service: Option<Service>) -> Result<()> {
        if let Some(service) = service {
            stop_service(service).await;
        }
        match tokio::time::timeout(FLUSH_TIMEOUT, self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "flush failed"),
            Err(_) => tracing::warn!("flush timed out; unsent messages are lost"),
        }
        self.client
            .drain()
            .await
            .map_err(|e| anyhow::anyhow!("draining the NATS connection: {e}"))?;
        tracing::info!("{} stopped", self.name);
        Ok(())
    }
}

/// One endpoint of the service, named `name` (in `$SRV.STATS`), on `subject`.
pub async fn endpoint(service: &Service, name: &str, subject: &str) -> Result<Endpoint> {
    service
        .endpoint_builder()
        .name(name)
        .add(subject.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("adding endpoint {subject}: {e}"))
}

/// Stops taking requests: every endpoint's stream ends.
pub async fn stop_service(service: Service) {
    if let Err(e) = service.stop().await {
        tracing::warn!(error = %e, "stopping the NATS service");
    }
}

/// The process's exit: an error is logged with its causes, and the code is 1.
pub fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
