//! rust-market-data: the price engine, as a library so the binary (main.rs) and
//! the benchmark driver (benches/market_data.rs) run the same code.

/// NATS user and service name.
pub const SERVICE: &str = "market-data";

pub mod alerts;
pub mod api;
pub mod arb;
pub mod bars;
pub mod books;
pub mod config;
pub mod connectors;
pub mod encode;
pub mod engine;
pub mod feed;
pub mod fnv;
pub mod history;
pub mod market;
pub mod metrics;
pub mod prefetch;
pub mod replay;
pub mod sim;
