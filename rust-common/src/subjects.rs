//! Subject names of proto/SUBJECTS.md. Build subjects only from validated
//! `Symbol` / `Venue` values (they are single safe tokens), never from raw input.

use std::fmt::Display;

pub const ACCOUNT: &str = "risk.account";
pub const RISK_EVENTS: &str = "risk.events";
pub const RISK_CHECK: &str = "risk.api.check";
/// `risk.api.killswitch.<caller>` / `risk.api.limits.<caller>`: the caller is the NATS
/// user, pinned by its permissions (proto/nats/moonbus.conf), never a payload claim.
pub const RISK_KILLSWITCH: &str = "risk.api.killswitch.*";
pub const RISK_LIMITS: &str = "risk.api.limits.*";
pub const RISK_POSITIONS: &str = "risk.api.positions";
pub const RISK_VERSION: &str = "risk.api.version";
pub const MD_PRICE: &str = "md.api.price";
pub const MD_PRICES: &str = "md.api.prices";
pub const MD_HISTORY: &str = "md.api.history";
pub const MD_MONITOR_START: &str = "md.api.monitor.start";
pub const MD_MONITOR_STOP: &str = "md.api.monitor.stop";
pub const MD_MONITOR_STATUS: &str = "md.api.monitor.status";
pub const MD_VERSION: &str = "md.api.version";
pub const EXEC_VERSION: &str = "exec.api.version";
pub const ALL_TICKS: &str = "md.tick.>";
pub const ALL_REPORTS: &str = "exec.report.>";
pub const ORDERS_SUBMIT_ALL: &str = "orders.submit.>";
pub const ORDERS_CANCEL_ALL: &str = "orders.cancel.>";
/// Every live venue's [`LiveVenueStatus`](crate::LiveVenueStatus) (published by execution only).
pub const ALL_VENUE_STATUS: &str = "exec.venue.>";
/// Every protection's [`ProtectionState`](crate::ProtectionState) (published by execution only).
pub const ALL_PROTECTIONS: &str = "exec.protection.>";
/// nats-server's advisory when execution's ORDERS consumer gives up on a message
/// (`max_deliver`); kept in the DEADLETTER stream, acted on by execution.
pub const DEAD_LETTER_ADVISORY: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.execution";

/// The JetStream streams; ORDERS dedupes on `Nats-Msg-Id` = client_order_id.
pub const ORDERS_STREAM: &str = "ORDERS";
pub const EXEC_STREAM: &str = "EXEC";

/// The KV bucket for the latest state a starting service reads at once
/// (services/common/streams.py `KV_BUCKET`).
pub const KV_BUCKET: &str = "moonbus";

/// Where a report goes when the order's symbol cannot be trusted.
pub const INVALID_TOKEN: &str = "_invalid";

pub fn tick(venue: impl Display, symbol: impl Display) -> String {
    format!("md.tick.{venue}.{symbol}")
}
pub fn bar(interval: impl Display, venue: impl Display, symbol: impl Display) -> String {
    format!("md.bar.{interval}.{venue}.{symbol}")
}
pub fn book(venue: impl Display, symbol: impl Display) -> String {
    format!("md.book.{venue}.{symbol}")
}
pub fn alert(symbol: impl Display) -> String {
    format!("md.alert.{symbol}")
}
/// `md.arb.<symbol>`: cross-venue arbitrage opportunities, published by market-data.
pub fn arb(symbol: impl Display) -> String {
    format!("md.arb.{symbol}")
}
pub fn feed_status(venue: impl Display) -> String {
    format!("md.status.{venue}")
}
pub fn verdict(symbol: impl Display) -> String {
    format!("risk.verdict.{symbol}")
}
pub fn exec_report(symbol: impl Display) -> String {
    format!("exec.report.{symbol}")
}
/// `exec.venue.<venue>`: a live venue's status and account, published by execution only.
pub fn exec_venue(venue: impl Display) -> String {
    format!("exec.venue.{venue}")
}
/// `exec.protection.<symbol>`: a protection's state, published by execution only.
pub fn exec_protection(symbol: impl Display) -> String {
    format!("exec.protection.{symbol}")
}
/// The KV bucket of execution's protections (key: the entry's client_order_id), a bucket
/// of its own (services/contract/subjects.py `KV_PROTECTIONS_BUCKET`).
pub const KV_PROTECTIONS_BUCKET: &str = "protections";
/// `risk.recon.<venue>`: risk's reconciliation of a live venue, published by risk only;
/// also the KV key of the latest one.
pub fn risk_recon(venue: impl Display) -> String {
    format!("risk.recon.{venue}")
}
/// `orders.submit.<agent>.<symbol>`: each NATS user may publish only its own agent token.
pub fn orders_submit(agent: impl Display, symbol: impl Display) -> String {
    format!("orders.submit.{agent}.{symbol}")
}

/// The agent of rust-risk's kill-switch flatten orders (`orders.submit.killswitch.<symbol>`).
pub const KILLSWITCH_AGENT: &str = "killswitch";
/// The agent of execution's protection exits (`orders.submit.protection.<symbol>`).
pub const PROTECTION_AGENT: &str = "protection";

/// Submit or cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    Submit,
    Cancel,
}

/// `orders.<submit|cancel>.<agent>.<symbol>` -> (kind, agent token, symbol token); None for
/// any other shape. The tokens are not validated here.
pub fn parse_order_subject(subject: &str) -> Option<(OrderKind, &str, &str)> {
    let mut tokens = subject.split('.');
    let (Some("orders"), Some(kind), Some(agent), Some(symbol), None) = (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) else {
        return None;
    };
    let kind = match kind {
        "submit" => OrderKind::Submit,
        "cancel" => OrderKind::Cancel,
        _ => return None,
    };
    Some((kind, agent, symbol))
}
pub fn errors(service: impl Display) -> String {
    format!("errors.{service}")
}

/// The last token of a subject (`orders.submit.BTC-USD` -> `BTC-USD`).
pub fn last_token(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}
