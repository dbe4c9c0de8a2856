//! moonbus shared crate: the bus contract (message types, subjects), NATS connect,
//! configuration, logging, shutdown and the Prometheus metrics primitives. No business logic lives here.

pub mod bus;
pub mod caps;
pub mod config;
pub mod horizon;
pub mod leader;
pub mod messages;
pub mod metrics;
pub mod service;
pub mod snapshot;
pub mod streams;
pub mod subjects;
pub mod telemetry;

pub use messages::*;

#[cfg(feature = "testing")]
pub mod testing;
