//! The agents' messages: [`Sentiment`], [`Signal`], the swarm's [`Vote`]s and
//! [`Consensus`], and the swarm ask request.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::check::{self, quoted, wire_enum, ValidationError};
use super::ids::{AgentName, Symbol};

wire_enum! {
    /// The decision of a [`Signal`].
    Action {
        /// Buy the symbol.
        Buy = "BUY",
        /// Sell the symbol.
        Sell = "SELL",
        /// Do nothing.
        Hold = "HOLD",
    }
}

wire_enum! {
    /// A swarm member's vote; ABSTAIN when it failed or timed out.
    VoteAction {
        /// Buy the symbol.
        Buy = "BUY",
        /// Sell the symbol.
        Sell = "SELL",
        /// Do nothing.
        Hold = "HOLD",
        /// No vote: the member failed or timed out.
        Abstain = "ABSTAIN",
    }
}

wire_enum! {
    /// [`Consensus::method`].
    ConsensusMethod {
        /// The action with the most votes; a tie -> HOLD.
        Majority = "majority",
        /// The action with the largest sum of confidences; a tie -> HOLD.
        Weighted = "weighted",
        /// The majority action, if it holds the quorum of all members, else HOLD.
        Quorum = "quorum",
    }
}

/// `agent.sentiment.<symbol>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    pub symbol: Symbol,
    /// -1 ..= 1.
    #[serde(deserialize_with = "check::score")]
    pub score: f64,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    pub items: u64,
    #[serde(default)]
    pub sources: Vec<String>,
    pub model: String,
    pub ts: u64,
}

/// `agent.signal.<agent>.<symbol>`: one decision, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub agent: AgentName,
    pub symbol: Symbol,
    pub action: Action,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    pub reasoning: String,
    pub model: String,
    #[serde(default)]
    pub fallback: bool,
    /// Time the model took (LLM call or rule), milliseconds.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    /// Estimated LLM cost of this decision, USD.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    pub origin_ts: u64,
    pub ts: u64,
}

/// One swarm member's answer, in [`Consensus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub model: String,
    pub action: VoteAction,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    #[serde(default)]
    pub reasoning: String,
    #[serde(deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `agent.swarm.<symbol>` and the `agent.api.swarm.ask` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    pub symbol: Symbol,
    pub question: String,
    pub votes: Vec<Vote>,
    pub action: VoteAction,
    pub method: ConsensusMethod,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub agreement: f64,
    pub summary: String,
    pub ts: u64,
}

/// `agent.api.swarm.ask` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmAskRequest {
    pub symbol: Symbol,
    /// At most 2000 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 2000, _>")]
    pub question: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentiment_score_bounds() {
        let score = |s: &str| {
            let text = format!(
                r#"{{"symbol":"BTC-USD","score":{s},"confidence":1,"items":0,"model":"m","ts":0}}"#
            );
            serde_json::from_str::<Sentiment>(&text)
        };
        assert!(score("-1").is_ok() && score("-0.5").is_ok() && score("1").is_ok());
        assert!(score("-1.01").is_err() && score("true").is_err());
    }
}
