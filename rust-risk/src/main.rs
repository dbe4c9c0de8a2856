//! rust-risk: positions, PnL, limits and the kill switch; answers `risk.api.check`
//! for every order before execution routes it. Fails closed: until its state is
//! rebuilt from the EXEC stream, and whenever a rule cannot be evaluated, it refuses.

use std::process::ExitCode;

use anyhow::Result;
use moonbus_common::service::{exit, Base};
use rust_risk::{config, service};

// One thread: the check loop, the NATS connection and the EXEC feed hand messages to
// each other without cross-thread wake-ups (measured: bench/order_path.py, issue #17).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    exit(run().await)
}

async fn run() -> Result<()> {
    let (base, settings) = Base::start(service::SERVICE, config::Settings::load).await?;
    service::run(base, settings).await
}
