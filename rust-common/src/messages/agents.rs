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
    /// The symbol.
    pub symbol: Symbol,
    /// -1 ..= 1.
    #[serde(deserialize_with = "check::score")]
    pub score: f64,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    /// How many news items the score is made of.
    pub items: u64,
    /// Where the items came from.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The model that scored the items.
    pub model: String,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `agent.signal.<agent>.<symbol>`: one decision, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The agent that decided.
    pub agent: AgentName,
    /// The symbol.
    pub symbol: Symbol,
    /// The decision.
    pub action: Action,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    /// Why, in words (with the reason when the fallback decided).
    pub reasoning: String,
    /// The model that decided (LLM or rule).
    pub model: String,
    /// True when the fallback strategy decided instead of the model.
    #[serde(default)]
    pub fallback: bool,
    /// Time the model took (LLM call or rule), milliseconds.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    /// Estimated LLM cost of this decision, USD.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    /// The event the decision answers (a bar's end), ns since the epoch.
    pub origin_ts: u64,
    /// When this was made, ns since the epoch.
    pub ts: u64,
    /// What the decision pipeline weighed besides the strategy, with ages (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<SignalInput>>,
}

/// One input of a decision besides its strategy ([`Signal::inputs`]), with its age.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalInput {
    /// "swarm" or "sentiment".
    pub source: String,
    /// The swarm's consensus action; empty for sentiment.
    #[serde(default)]
    pub action: String,
    /// Swarm: its agreement (0 ..= 1); sentiment: its score (-1 ..= 1).
    #[serde(deserialize_with = "check::score")]
    pub value: f64,
    /// How old it was when the decision was made, seconds.
    #[serde(deserialize_with = "check::non_negative")]
    pub age_s: f64,
    /// When the input was made, ns since the epoch.
    pub ts: u64,
    /// What it did ("confirms", "vetoes", "stale: ignored", ...).
    #[serde(default)]
    pub effect: String,
}

/// One swarm member's answer, in [`Consensus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    /// The member that voted.
    pub model: String,
    /// Its vote; ABSTAIN when it failed or timed out.
    pub action: VoteAction,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    /// Why, in words.
    #[serde(default)]
    pub reasoning: String,
    /// Time the member took, milliseconds.
    #[serde(deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    /// Estimated LLM cost of the vote, USD.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    /// Why the member abstained (or fell back), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `agent.swarm.<symbol>` and the `agent.api.swarm.ask` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    /// The symbol.
    pub symbol: Symbol,
    /// What the swarm was asked.
    pub question: String,
    /// Every member's vote.
    pub votes: Vec<Vote>,
    /// The outcome; ABSTAIN when no member voted.
    pub action: VoteAction,
    /// How the votes were combined.
    pub method: ConsensusMethod,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub agreement: f64,
    /// The outcome and the votes, in words.
    pub summary: String,
    /// When this was made, ns since the epoch.
    pub ts: u64,
}

/// `agent.api.swarm.ask` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmAskRequest {
    /// The symbol to ask about.
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
