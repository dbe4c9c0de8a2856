//! Risk: the [`Verdict`] per symbol, the [`AccountState`], [`Position`]s, and the
//! `risk.api.*` requests and replies (pre-trade check, kill switch, limits, positions).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::check::{self, quoted, validated_on_read, wire_enum, ValidationError};
use super::ids::{AgentName, ClientOrderId, Symbol, Venue};
use super::money::{Money, NonNegativeMoney, PositiveMoney};
use super::orders::{OrderType, Side};

wire_enum! {
    /// What risk allows: trade, only reduce positions, nothing.
    TradingState {
        /// Trading allowed, within the limits.
        Active = "ACTIVE",
        /// Only orders that reduce a position.
        ReduceOnly = "REDUCE_ONLY",
        /// No orders at all.
        Halted = "HALTED",
    }
}

wire_enum! {
    /// [`KillSwitchRequest::action`].
    KillSwitchAction {
        /// Stop all trading (optionally flattening the positions).
        Engage = "engage",
        /// Allow trading again.
        Release = "release",
        /// Only read the switch's state.
        Status = "status",
    }
}

fn default_actor() -> String {
    "operator".into()
}

/// `risk.verdict.<symbol>`: may agents trade this symbol, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The symbol.
    pub symbol: Symbol,
    /// What agents may do with the symbol.
    pub state: TradingState,
    /// Why the state is not ACTIVE (reason codes).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The current position (negative = short).
    #[serde(default)]
    pub position: Money,
    /// The `max_order_notional` limit in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    /// Why, in words (e.g. the move that tripped the circuit breaker).
    #[serde(default)]
    pub detail: String,
    /// While a circuit breaker halts the symbol: when the halt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_until: Option<u64>,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `risk.account`: the account as risk sees it (on change and as a heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    /// What the account may do.
    pub state: TradingState,
    /// Why the state is not ACTIVE (reason codes).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Cash.
    pub cash: Money,
    /// Cash plus the positions' value.
    pub equity: Money,
    /// The highest equity seen, for the drawdown.
    pub peak_equity: Money,
    /// Equity below its peak, percent (>= 0).
    #[serde(deserialize_with = "check::non_negative")]
    pub drawdown_pct: f64,
    /// Realized PnL.
    pub realized_pnl: Money,
    /// Unrealized PnL at the marks.
    pub unrealized_pnl: Money,
    /// PnL of the current UTC day.
    pub day_pnl: Money,
    /// Fees paid.
    pub fees: NonNegativeMoney,
    /// Sum of the positions' notionals.
    pub gross_exposure: NonNegativeMoney,
    /// Number of open positions.
    pub open_positions: u64,
    /// True while the kill switch is engaged.
    pub kill_switch: bool,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// One position, in [`PositionsReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The symbol.
    pub symbol: Symbol,
    /// Signed quantity (negative = short).
    pub quantity: Money,
    /// Average entry price.
    pub avg_price: NonNegativeMoney,
    /// The latest mark, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_price: Option<NonNegativeMoney>,
    /// Realized PnL.
    pub realized_pnl: Money,
    /// Unrealized PnL at the mark.
    pub unrealized_pnl: Money,
    /// Fees paid.
    pub fees: NonNegativeMoney,
    /// The position's notional (unsigned).
    pub notional: NonNegativeMoney,
}

/// `risk.api.check` request: may this order be routed? Sent by execution only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskCheckRequest {
    /// The agent's id of the order.
    pub client_order_id: ClientOrderId,
    /// The agent that sent the order.
    pub agent: AgentName,
    /// The symbol.
    pub symbol: Symbol,
    /// The venue the order goes to.
    pub venue: Venue,
    /// BUY or SELL.
    pub side: Side,
    /// MARKET or LIMIT (`type` on the wire).
    #[serde(rename = "type")]
    pub order_type: OrderType,
    /// The order's quantity.
    pub quantity: PositiveMoney,
    /// The order's limit price (LIMIT orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<PositiveMoney>,
    /// The order may only reduce a position.
    #[serde(default)]
    pub reduce_only: bool,
    /// The latest price execution knows for the symbol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_price: Option<PositiveMoney>,
    /// When the check was asked, ns since the epoch.
    pub ts: u64,
}

/// `risk.api.check` reply. approved=false always carries reason_code and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RiskCheckResult {
    /// The order checked.
    pub client_order_id: ClientOrderId,
    /// May the order be routed.
    pub approved: bool,
    /// Why not, as a code (e.g. `max_order_notional`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    /// Why not, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The account's trading state.
    pub state: TradingState,
    /// When risk answered, ns since the epoch.
    pub ts: u64,
}

impl RiskCheckResult {
    /// A refused check must carry a non-empty reason_code and reason.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let missing = |s: &Option<String>| s.as_deref().unwrap_or_default().is_empty();
        if !self.approved && (missing(&self.reason_code) || missing(&self.reason)) {
            return Err(ValidationError::new(
                "a refused check must carry reason_code and reason",
            ));
        }
        Ok(())
    }
}

/// `risk.api.killswitch` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchRequest {
    /// Engage, release, or only read the state.
    pub action: KillSwitchAction,
    /// 1 to 64 characters.
    #[serde(
        default = "default_actor",
        deserialize_with = "check::chars::<1, 64, _>"
    )]
    pub actor: String,
    /// At most 500 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 500, _>")]
    pub reason: String,
    /// With engage: also close every position (reduce-only orders).
    #[serde(default)]
    pub flatten: bool,
}

/// `risk.api.killswitch` reply and `risk.events` kill-switch event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSwitchState {
    /// True while the kill switch is engaged.
    pub engaged: bool,
    /// Who changed it last.
    pub actor: String,
    /// Why, as given by the actor.
    pub reason: String,
    /// When it changed last, ns since the epoch.
    pub changed_ts: u64,
    /// engage + flatten: reduce-only orders stored in ORDERS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten_orders: Option<u64>,
}

/// The limits rust-risk enforces (all present in replies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskLimits {
    /// The largest notional of one order.
    pub max_order_notional: NonNegativeMoney,
    /// The largest notional of one position.
    pub max_position_notional: NonNegativeMoney,
    /// The largest sum of the positions' notionals.
    pub max_gross_exposure: NonNegativeMoney,
    /// Cash may not fall below this.
    pub min_cash: Money,
    /// The largest loss of one UTC day.
    pub max_daily_loss: NonNegativeMoney,
    /// The largest drawdown from peak equity, percent.
    #[serde(deserialize_with = "check::non_negative")]
    pub max_drawdown_pct: f64,
}

/// The limits to change; the ones left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// New `max_order_notional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    /// New `max_position_notional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_notional: Option<NonNegativeMoney>,
    /// New `max_gross_exposure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gross_exposure: Option<NonNegativeMoney>,
    /// New `min_cash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cash: Option<Money>,
    /// New `max_daily_loss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_daily_loss: Option<NonNegativeMoney>,
    /// 0 ..= 100.
    #[serde(
        default,
        deserialize_with = "check::optional_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_drawdown_pct: Option<f64>,
}

/// `risk.api.limits` request: read (no `set`) or change some limits; optionally
/// release the loss latch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// The limits to change; none = only read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<LimitsPatch>,
    /// End the loss latch (REDUCE_ONLY / HALTED after a loss or drawdown limit tripped).
    #[serde(default)]
    pub release_loss_latch: bool,
    /// 1 to 64 characters.
    #[serde(
        default = "default_actor",
        deserialize_with = "check::chars::<1, 64, _>"
    )]
    pub actor: String,
    /// At most 500 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 500, _>")]
    pub reason: String,
}

/// `{}`: read the limits, change nothing.
impl Default for LimitsRequest {
    fn default() -> Self {
        Self {
            set: None,
            release_loss_latch: false,
            actor: default_actor(),
            reason: String::new(),
        }
    }
}

/// `risk.api.limits` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsReply {
    /// The limits in force.
    pub limits: RiskLimits,
}

/// `risk.api.positions` request; no symbol = all positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsRequest {
    /// Only this symbol's position; none = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
}

/// `risk.api.positions` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionsReply {
    /// The positions.
    pub positions: Vec<Position>,
    /// The account.
    pub account: AccountState,
}

validated_on_read!(RiskCheckResult);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_need_a_reason() {
        let check = r#"{"client_order_id":"x","approved":false,"reason_code":"a","reason":"",
                        "state":"ACTIVE","ts":1}"#;
        assert!(serde_json::from_str::<RiskCheckResult>(check).is_err());
    }

    #[test]
    fn limits_patch_bounds() {
        let patch = |pct: &str| {
            serde_json::from_str::<LimitsPatch>(&format!(r#"{{"max_drawdown_pct":{pct}}}"#))
        };
        assert!(patch("100").is_ok() && patch("0").is_ok() && patch("null").is_ok());
        assert!(patch("100.1").is_err() && patch("-1").is_err());
    }

    #[test]
    fn string_lengths_count_characters() {
        let request = format!(r#"{{"action":"engage","actor":"{}"}}"#, "é".repeat(64));
        assert!(serde_json::from_str::<KillSwitchRequest>(&request).is_ok());
        let request = format!(r#"{{"action":"engage","actor":"{}"}}"#, "é".repeat(65));
        assert!(serde_json::from_str::<KillSwitchRequest>(&request).is_err());
        assert!(
            serde_json::from_str::<KillSwitchRequest>(r#"{"action":"status","actor":""}"#).is_err()
        );
        let request: KillSwitchRequest = serde_json::from_str(r#"{"action":"status"}"#).unwrap();
        assert_eq!(
            (request.actor.as_str(), request.reason.as_str()),
            ("operator", "")
        );
    }
}
