//! Orders and their outcome: [`OrderRequest`], [`CancelRequest`], [`ExecutionReport`]
//! with its [`Timings`], and the order enums ([`Side`], [`OrderType`], ...).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::check::{quoted, validated_on_read, wire_enum, ValidationError};
use super::ids::{AgentName, ClientOrderId, Symbol, Venue};
use super::money::{NonNegativeMoney, PositiveMoney};

wire_enum! {
    /// The side of an order or a fill.
    Side {
        /// Buy: the position grows by the quantity.
        Buy = "BUY",
        /// Sell: the position shrinks by the quantity.
        Sell = "SELL",
    }
}

wire_enum! {
    /// How an order is priced; MARKET when left out.
    #[derive(Default)]
    OrderType {
        /// Fill at what the market offers (the book, or the tick with slippage).
        #[default]
        Market = "MARKET",
        /// Fill at `limit_price` or better.
        Limit = "LIMIT",
    }
}

wire_enum! {
    /// How long an order that cannot fill now stays; GTC when left out.
    #[derive(Default)]
    TimeInForce {
        /// Good till cancelled: rests until it fills or is cancelled.
        #[default]
        Gtc = "GTC",
        /// Immediate or cancel: what does not fill now expires.
        Ioc = "IOC",
    }
}

wire_enum! {
    /// The state of an order an [`ExecutionReport`] announces.
    OrderStatus {
        /// Taken by the venue, not filled yet (resting).
        Accepted = "ACCEPTED",
        /// Refused (by risk, the intake or the venue); `reason` says why.
        Rejected = "REJECTED",
        /// Part of the quantity filled.
        PartiallyFilled = "PARTIALLY_FILLED",
        /// The whole quantity filled.
        Filled = "FILLED",
        /// Cancelled by a cancel request.
        Cancelled = "CANCELLED",
        /// Ended unfilled (or the rest of it): nothing more to fill against.
        Expired = "EXPIRED",
        /// Could not be processed; `reason` says why.
        Failed = "FAILED",
    }
}

wire_enum! {
    /// An execution algorithm ([`ExecAlgo`]).
    AlgoKind {
        /// Time-weighted: `slices` children evenly over `duration_ms`.
        Twap = "TWAP",
        /// One child of `display_quantity` at a time, the next when the previous ends.
        Iceberg = "ICEBERG",
    }
}

wire_enum! {
    /// Why execution made an order out of another one ([`ExecutionReport::child_kind`]).
    ChildKind {
        /// A protective stop-loss of a filled order.
        StopLoss = "STOP_LOSS",
        /// A protective take-profit of a filled order.
        TakeProfit = "TAKE_PROFIT",
        /// A trailing stop of a filled order.
        TrailingStop = "TRAILING_STOP",
        /// A slice (child) of an algo order: TWAP slice, ICEBERG chunk.
        Slice = "SLICE",
    }
}

/// TWAP `duration_ms` bounds: 1 s ..= 24 h.
pub const TWAP_DURATION_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// TWAP `slices` bounds.
pub const TWAP_SLICES: std::ops::RangeInclusive<u32> = 2..=500;

/// `OrderRequest.algo`: execution works the order as children (rust-execution algo.rs).
///
/// TWAP needs `duration_ms` and `slices` and takes no `display_quantity`; ICEBERG needs
/// `display_quantity` (below the order's quantity, checked by [`OrderRequest::validate`])
/// and takes neither `duration_ms` nor `slices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ExecAlgo {
    /// TWAP or ICEBERG.
    pub kind: AlgoKind,
    /// TWAP: over how long, in ms (1_000 ..= 86_400_000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// TWAP: how many children (2 ..= 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<u32>,
    /// ICEBERG: each child's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_quantity: Option<PositiveMoney>,
}

impl ExecAlgo {
    /// The cross-field rules of each kind and the TWAP bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self.kind {
            AlgoKind::Twap => {
                let (Some(duration_ms), Some(slices)) = (self.duration_ms, self.slices) else {
                    return Err(ValidationError::new(
                        "a TWAP algo needs duration_ms and slices",
                    ));
                };
                if self.display_quantity.is_some() {
                    return Err(ValidationError::new(
                        "a TWAP algo takes no display_quantity",
                    ));
                }
                if !TWAP_DURATION_MS.contains(&duration_ms) {
                    return Err(ValidationError::new(format!(
                        "duration_ms {duration_ms} is not in [1000, 86400000]"
                    )));
                }
                if !TWAP_SLICES.contains(&slices) {
                    return Err(ValidationError::new(format!(
                        "slices {slices} is not in [2, 500]"
                    )));
                }
            }
            AlgoKind::Iceberg => {
                if self.display_quantity.is_none() {
                    return Err(ValidationError::new(
                        "an ICEBERG algo needs display_quantity",
                    ));
                }
                if self.duration_ms.is_some() || self.slices.is_some() {
                    return Err(ValidationError::new(
                        "an ICEBERG algo takes no duration_ms or slices",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `ExecutionReport.algo`: where a parent order's algorithm is (on the parent's reports
/// only; the fills are on its children's reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlgoProgress {
    /// TWAP or ICEBERG.
    pub kind: AlgoKind,
    /// TWAP: its slices; ICEBERG: none (the count depends on the fills).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices_total: Option<u64>,
    /// Children sent so far.
    pub slices_sent: u64,
    /// Children filled completely so far.
    pub slices_filled: u64,
    /// The child working now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_child_id: Option<ClientOrderId>,
    /// When the next child is due, ns since the epoch; none when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_slice_ts: Option<u64>,
}

wire_enum! {
    /// A protection's state in its [`ProtectionState`].
    ProtectionStatus {
        /// Watching ticks (the entry filled).
        Armed = "ARMED",
        /// A trigger was crossed; the exit is sent and not filled yet.
        Triggered = "TRIGGERED",
        /// The exit filled: the protected quantity is closed.
        Closed = "CLOSED",
        /// Cancelled (the entry's cancel, an entry that never filled, the kill switch).
        Cancelled = "CANCELLED",
    }
}

/// The largest `trailing_stop_bps` (50 %).
pub const MAX_TRAILING_STOP_BPS: u32 = 5000;

fn check_trailing(bps: Option<u32>) -> Result<(), ValidationError> {
    match bps {
        Some(bps) if !(1..=MAX_TRAILING_STOP_BPS).contains(&bps) => Err(ValidationError::new(
            format!("trailing_stop_bps {bps} is not within 1..={MAX_TRAILING_STOP_BPS}"),
        )),
        _ => Ok(()),
    }
}

/// Exits attached to an entry order ([`OrderRequest::protection`]), carried out by
/// execution once the entry fills: trigger prices, and a stop trailing the best price
/// since arming by `trailing_stop_bps`. At least one is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Protection {
    /// Exit when the price reaches this (below a long's entry, above a short's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_loss: Option<PositiveMoney>,
    /// Exit when the price reaches this (above a long's entry, below a short's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_profit: Option<PositiveMoney>,
    /// A stop this many basis points from the best price since arming (1..=5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_stop_bps: Option<u32>,
}

impl Protection {
    /// At least one leg; the trailing distance within 1..=5000 bps.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.stop_loss.is_none()
            && self.take_profit.is_none()
            && self.trailing_stop_bps.is_none()
        {
            return Err(ValidationError::new(
                "a protection needs stop_loss, take_profit or trailing_stop_bps",
            ));
        }
        check_trailing(self.trailing_stop_bps)
    }
}

impl Side {
    /// +1 for BUY, -1 for SELL: the sign of the position change.
    pub fn sign(self) -> Decimal {
        match self {
            Side::Buy => Decimal::ONE,
            Side::Sell => Decimal::NEGATIVE_ONE,
        }
    }

    /// The other side (SELL for BUY).
    pub fn opposite(self) -> Self {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// `orders.submit.<symbol>` (JetStream ORDERS, Nats-Msg-Id = client_order_id).
///
/// A LIMIT order needs `limit_price`, a MARKET order takes none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct OrderRequest {
    /// The agent's id of the order.
    pub client_order_id: ClientOrderId,
    /// The agent that sent the order.
    pub agent: AgentName,
    /// The symbol.
    pub symbol: Symbol,
    /// Where to route it; `sim` when left out.
    #[serde(default = "Venue::sim")]
    pub venue: Venue,
    /// BUY or SELL.
    pub side: Side,
    /// MARKET or LIMIT (`type` on the wire).
    #[serde(rename = "type", default)]
    pub order_type: OrderType,
    /// How much to buy or sell (> 0).
    pub quantity: PositiveMoney,
    /// The worst price accepted; LIMIT orders only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<PositiveMoney>,
    /// GTC or IOC; GTC when left out.
    #[serde(default)]
    pub time_in_force: TimeInForce,
    /// Only reduce a position, never grow or flip it.
    #[serde(default)]
    pub reduce_only: bool,
    /// The price the agent decided at; reports measure slippage against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_price: Option<PositiveMoney>,
    /// Exits execution attaches to the position this order opens (not on a reduce-only order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<Protection>,
    /// The event that led to the order (e.g. a bar's end), ns since the epoch.
    pub origin_ts: u64,
    /// When the order was sent, ns since the epoch.
    pub ts: u64,
    /// Worked by execution as children (TWAP slices, ICEBERG chunks); none: one order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algo: Option<ExecAlgo>,
}

impl OrderRequest {
    /// The cross-field rule: a LIMIT order needs `limit_price`, a MARKET order takes none.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match (self.order_type, &self.limit_price) {
            (OrderType::Limit, None) => {
                Err(ValidationError::new("a LIMIT order needs limit_price"))
            }
            (OrderType::Market, Some(_)) => {
                Err(ValidationError::new("a MARKET order takes no limit_price"))
            }
            _ => Ok(()),
        }?;
        if let Some(display) = self.algo.as_ref().and_then(|a| a.display_quantity) {
            if display >= self.quantity {
                return Err(ValidationError::new(
                    "an ICEBERG's display_quantity must be below the order's quantity",
                ));
            }
        }
        let Some(protection) = &self.protection else {
            return Ok(());
        };
        if self.algo.is_some() {
            return Err(ValidationError::new(
                "an algo order takes no protection (its children carry the fills)",
            ));
        }
        if self.reduce_only {
            return Err(ValidationError::new(
                "a reduce_only order takes no protection (it protects no new position)",
            ));
        }
        if let (Some(stop), Some(take)) = (protection.stop_loss, protection.take_profit) {
            if self.side == Side::Buy && stop.get() >= take.get() {
                return Err(ValidationError::new(
                    "a BUY's protection needs stop_loss below take_profit",
                ));
            }
            if self.side == Side::Sell && stop.get() <= take.get() {
                return Err(ValidationError::new(
                    "a SELL's protection needs stop_loss above take_profit",
                ));
            }
        }
        Ok(())
    }
}

/// `orders.cancel.<symbol>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// The order to cancel.
    pub client_order_id: ClientOrderId,
    /// The agent that owns the order.
    pub agent: AgentName,
    /// The symbol.
    pub symbol: Symbol,
    /// When the cancel was sent, ns since the epoch.
    pub ts: u64,
}

/// Each hop of an order, nanoseconds since the epoch; None = hop not reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// The event that led to the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_ts: Option<u64>,
    /// Execution received the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ts: Option<u64>,
    /// Risk answered the pre-trade check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_checked_ts: Option<u64>,
    /// The order (or a part) filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filled_ts: Option<u64>,
}

/// `exec.report.<symbol>` (JetStream EXEC).
///
/// For an order so malformed that its id or symbol cannot be trusted, those
/// fields are None and the report goes to `exec.report._invalid`.
/// A REJECTED or FAILED report carries a non-empty reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ExecutionReport {
    /// The agent's id of the order; none when it cannot be trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_order_id: Option<ClientOrderId>,
    /// Execution's id of the order (`<venue>-<ORDERS sequence>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The venue's own id of a live order, once the venue has one (a Solana transaction
    /// signature, a Binance orderId): a restarted execution finds the order by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue_order_id: Option<String>,
    /// The agent that sent the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentName>,
    /// The symbol; none when it cannot be trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
    /// The venue the order went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Venue>,
    /// BUY or SELL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    /// A child order execution made (an algo's slice, a protection): its parent's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_order_id: Option<ClientOrderId>,
    /// A child order execution made: what kind of child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_kind: Option<ChildKind>,
    /// The order's state.
    pub status: OrderStatus,
    /// Why (required when REJECTED or FAILED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The order's quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<NonNegativeMoney>,
    /// How much has filled so far.
    #[serde(default)]
    pub filled_quantity: NonNegativeMoney,
    /// The price of the fill this report announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fill_price: Option<PositiveMoney>,
    /// The quantity of the fill this report announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fill_quantity: Option<NonNegativeMoney>,
    /// The average price of all fills so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avg_fill_price: Option<PositiveMoney>,
    /// The fee charged on the fill.
    #[serde(default)]
    pub fee: NonNegativeMoney,
    /// The fill price against the order's `decision_price`, basis points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slippage_bps: Option<f64>,
    /// The time of each hop.
    pub timings: Timings,
    /// When the report was made, ns since the epoch.
    pub ts: u64,
    /// On an algo parent's reports only: its progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algo: Option<AlgoProgress>,
}

impl ExecutionReport {
    /// The cross-field rule: a REJECTED or FAILED report carries a non-empty reason.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let refused = matches!(self.status, OrderStatus::Rejected | OrderStatus::Failed);
        if refused && self.reason.as_deref().unwrap_or_default().is_empty() {
            return Err(ValidationError::new(format!(
                "a {} report must carry a reason",
                self.status
            )));
        }
        Ok(())
    }
}

/// `exec.protection.<symbol>` (execution only; the latest per entry in KV bucket
/// `protections`, key `<parent_order_id>`): the protection of entry `parent_order_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ProtectionState {
    /// The entry order the protection belongs to.
    pub parent_order_id: ClientOrderId,
    /// The entry's agent.
    pub agent: AgentName,
    /// The symbol.
    pub symbol: Symbol,
    /// The venue of the entry and its exits.
    pub venue: Venue,
    /// The exits' side (SELL for a long, BUY for a short).
    pub side: Side,
    /// The open quantity protected.
    pub quantity: NonNegativeMoney,
    /// The stop-loss trigger price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_loss: Option<PositiveMoney>,
    /// The take-profit trigger price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_profit: Option<PositiveMoney>,
    /// The trailing stop's distance, basis points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_stop_bps: Option<u32>,
    /// The trailing stop's current trigger price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_trigger: Option<PositiveMoney>,
    /// ARMED, TRIGGERED, CLOSED or CANCELLED.
    pub state: ProtectionStatus,
    /// The reduce-only exit sent once triggered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_order_id: Option<ClientOrderId>,
    /// Why the state is what it is (the trigger crossed, a refusal, a cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When this state was made, ns since the epoch.
    pub ts: u64,
}

impl ProtectionState {
    /// The trailing distance within 1..=5000 bps.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_trailing(self.trailing_stop_bps)
    }
}

validated_on_read!(
    OrderRequest,
    ExecutionReport,
    ExecAlgo,
    Protection,
    ProtectionState
);

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str_exact(text).unwrap()
    }

    #[test]
    fn order_defaults_and_rules() {
        let order: OrderRequest = serde_json::from_str(
            r#"{"client_order_id":"a","agent":"trading","symbol":"SOL-USDC","side":"SELL",
                "quantity":"1","origin_ts":0,"ts":1}"#,
        )
        .unwrap();
        assert_eq!(order.venue, "sim");
        assert_eq!(order.order_type, OrderType::Market);
        assert_eq!(order.time_in_force, TimeInForce::Gtc);
        assert!(!order.reduce_only);
        let wire = serde_json::to_value(&order).unwrap();
        assert_eq!(wire["type"], "MARKET");
        assert!(wire.get("limit_price").is_none(), "None is left out");

        let mut limit = order.clone();
        limit.order_type = OrderType::Limit;
        let err = serde_json::from_value::<OrderRequest>(serde_json::to_value(&limit).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a LIMIT order needs limit_price"), "{err}");
        // null reads as None (pydantic agrees; the schema's `else: not required` does not).
        let mut nulled = wire.clone();
        nulled["limit_price"] = serde_json::Value::Null;
        assert!(serde_json::from_value::<OrderRequest>(nulled).is_ok());
    }

    #[test]
    fn refusals_need_a_reason() {
        let report = r#"{"status":"FAILED","reason":"","timings":{},"ts":1}"#;
        assert!(serde_json::from_str::<ExecutionReport>(report).is_err());
    }

    #[test]
    fn side_sign() {
        assert_eq!(Side::Buy.sign() * dec("2"), dec("2"));
        assert_eq!(Side::Sell.sign() * dec("2"), dec("-2"));
        assert_eq!("SELL".parse::<Side>().unwrap().opposite(), Side::Buy);
    }
}
