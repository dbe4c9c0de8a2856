//! rust-risk: positions, PnL, limits and the kill switch; answers `risk.api.check`
//! for every order before execution routes it. Fails closed: until its state is
//! rebuilt from the EXEC stream, and whenever a rule cannot be evaluated, it refuses.

mod access;
mod breaker;
mod config;
mod engine;
mod exec_feed;
mod flatten;
mod ledger;
mod limits;
mod metrics;
mod open_orders;
mod publish;
mod rate;
mod reservations;
mod rules;
mod service;
mod store;
mod watermarks;

use std::process::ExitCode;

use anyhow::Result;
use moonbus_common::bus;
use moonbus_common::config::Config;
use moonbus_common::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_logging();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let settings = config::Settings::load(&Config::load()?)?;
    let client = bus::connect(service::SERVICE).await?;
    service::run(settings, client).await
}
