//! rust-execution as a library: intake, the venue seam and the paper venue, reports; used
//! by the `rust-execution` binary (main.rs) and, unchanged, by the backtester (rust-backtest).

pub mod algo;
pub mod config;
pub mod deadletter;
pub mod engine;
pub mod intake;
pub mod jobs;
pub mod lanes;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod paper;
pub mod protect;
pub mod reports;
pub mod risk;
pub mod snapshot;
pub mod venue;
pub mod walk;
