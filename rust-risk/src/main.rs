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
use moonbus_common::service::{exit, Base};

#[tokio::main]
async fn main() -> ExitCode {
    exit(run().await)
}

async fn run() -> Result<()> {
    let (base, settings) = Base::start(service::SERVICE, config::Settings::load).await?;
    service::run(base, settings).await
}
