//! rust-risk as a library: the risk engine and its rules, used by the `rust-risk` binary
//! (main.rs) and, unchanged, by the backtester (rust-backtest).

pub mod access;
pub mod applied;
pub mod breaker;
pub mod config;
pub mod engine;
pub mod exec_feed;
pub mod flatten;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod open_orders;
pub mod publish;
pub mod rate;
pub mod recon;
pub mod reservations;
pub mod rules;
pub mod service;
pub mod shorts;
pub mod store;
pub mod ticks;
pub mod valuation;
pub mod watermarks;
