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
    pub symbol: Symbol,
    pub state: TradingState,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub position: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    /// Why, in words (e.g. the move that tripped the circuit breaker).
    #[serde(default)]
    pub detail: String,
    /// While a circuit breaker halts the symbol: when the halt ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_until: Option<u64>,
    pub ts: u64,
}

/// `risk.account`: the account as risk sees it (on change and as a heartbeat).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub state: TradingState,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub cash: Money,
    pub equity: Money,
    pub peak_equity: Money,
    #[serde(deserialize_with = "check::non_negative")]
    pub drawdown_pct: f64,
    pub realized_pnl: Money,
    pub unrealized_pnl: Money,
    pub day_pnl: Money,
    pub fees: NonNegativeMoney,
    pub gross_exposure: NonNegativeMoney,
    pub open_positions: u64,
    pub kill_switch: bool,
    pub ts: u64,
}

/// One position, in [`PositionsReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: Symbol,
    pub quantity: Money,
    pub avg_price: NonNegativeMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_price: Option<NonNegativeMoney>,
    pub realized_pnl: Money,
    pub unrealized_pnl: Money,
    pub fees: NonNegativeMoney,
    pub notional: NonNegativeMoney,
}

/// `risk.api.check` request: may this order be routed? Sent by execution only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskCheckRequest {
    pub client_order_id: ClientOrderId,
    pub agent: AgentName,
    pub symbol: Symbol,
    pub venue: Venue,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub quantity: PositiveMoney,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_price: Option<PositiveMoney>,
    #[serde(default)]
    pub reduce_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_price: Option<PositiveMoney>,
    pub ts: u64,
}

/// `risk.api.check` reply. approved=false always carries reason_code and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct RiskCheckResult {
    pub client_order_id: ClientOrderId,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub state: TradingState,
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
    #[serde(default)]
    pub flatten: bool,
}

/// `risk.api.killswitch` reply and `risk.events` kill-switch event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillSwitchState {
    pub engaged: bool,
    pub actor: String,
    pub reason: String,
    pub changed_ts: u64,
    /// engage + flatten: reduce-only orders stored in ORDERS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flatten_orders: Option<u64>,
}

/// The limits rust-risk enforces (all present in replies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskLimits {
    pub max_order_notional: NonNegativeMoney,
    pub max_position_notional: NonNegativeMoney,
    pub max_gross_exposure: NonNegativeMoney,
    pub min_cash: Money,
    pub max_daily_loss: NonNegativeMoney,
    #[serde(deserialize_with = "check::non_negative")]
    pub max_drawdown_pct: f64,
}

/// The limits to change; the ones left out keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_notional: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gross_exposure: Option<NonNegativeMoney>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cash: Option<Money>,
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
    pub limits: RiskLimits,
}

/// `risk.api.positions` request; no symbol = all positions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
}

/// `risk.api.positions` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionsReply {
    pub positions: Vec<Position>,
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
