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
    /// Where the items came from: at most 32, of at most 256 characters each.
    #[serde(default, deserialize_with = "check::short_strings::<32, 256, _>")]
    pub sources: Vec<String>,
    /// The model that scored the items, at most 256 characters.
    #[serde(deserialize_with = "check::chars::<0, 256, _>")]
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
    /// The member that voted, at most 256 characters.
    #[serde(deserialize_with = "check::chars::<0, 256, _>")]
    pub model: String,
    /// Its vote; ABSTAIN when it failed or timed out.
    pub action: VoteAction,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub confidence: f64,
    /// Why, in words; at most 2000 characters.
    #[serde(default, deserialize_with = "check::chars::<0, 2000, _>")]
    pub reasoning: String,
    /// Time the member took, milliseconds.
    #[serde(deserialize_with = "check::non_negative")]
    pub latency_ms: f64,
    /// Estimated LLM cost of the vote, USD.
    #[serde(default, deserialize_with = "check::non_negative")]
    pub cost_usd: f64,
    /// Why the member abstained (or fell back), if it did; at most 1000 characters.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "check::optional_chars::<0, 1000, _>"
    )]
    pub error: Option<String>,
}

/// `agent.swarm.<symbol>` and the `agent.api.swarm.ask` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consensus {
    /// The symbol.
    pub symbol: Symbol,
    /// What the swarm was asked, at most 2000 characters.
    #[serde(deserialize_with = "check::chars::<0, 2000, _>")]
    pub question: String,
    /// Every member's vote, at most 32.
    #[serde(deserialize_with = "check::at_most::<32, _, _>")]
    pub votes: Vec<Vote>,
    /// The outcome; ABSTAIN when no member voted.
    pub action: VoteAction,
    /// How the votes were combined.
    pub method: ConsensusMethod,
    /// 0 ..= 1.
    #[serde(deserialize_with = "check::unit")]
    pub agreement: f64,
    /// The outcome and the votes, in words; at most 4000 characters.
    #[serde(deserialize_with = "check::chars::<0, 4000, _>")]
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

    /// The bounds of models.py (NAME_MAX_CHARS, SENTIMENT_MAX_SOURCES, SWARM_MAX_VOTES, ...).
    #[test]
    fn text_and_list_bounds() {
        let sentiment = |sources: &str, model: &str| {
            let text = format!(
                r#"{{"symbol":"BTC-USD","score":0,"confidence":1,"items":0,"sources":{sources},"model":"{model}","ts":0}}"#
            );
            serde_json::from_str::<Sentiment>(&text)
        };
        let list = |n: usize, item: &str| format!("[{}]", vec![format!("\"{item}\""); n].join(","));
        let (a256, a257) = ("a".repeat(256), "a".repeat(257));
        assert!(sentiment(&list(32, &a256), &a256).is_ok());
        assert!(sentiment(&list(33, "x"), "m").is_err());
        assert!(sentiment(&list(1, &a257), "m").is_err());
        assert!(sentiment("[]", &a257).is_err());
        // characters, not bytes, as Python counts them
        assert!(sentiment("[]", &"\u{e9}".repeat(256)).is_ok());

        let vote = |model: &str, reasoning: &str, error: &str| {
            format!(
                r#"{{"model":"{model}","action":"HOLD","confidence":0,"reasoning":"{reasoning}","latency_ms":0,"error":{error}}}"#
            )
        };
        let consensus = |question: &str, votes: &[String], summary: &str| {
            let text = format!(
                r#"{{"symbol":"BTC-USD","question":"{question}","votes":[{}],"action":"HOLD","method":"majority","agreement":0,"summary":"{summary}","ts":0}}"#,
                votes.join(",")
            );
            serde_json::from_str::<Consensus>(&text)
        };
        let ok = vote(
            &a256,
            &"r".repeat(2000),
            &format!("\"{}\"", "e".repeat(1000)),
        );
        assert!(consensus(&"q".repeat(2000), &vec![ok.clone(); 32], &"s".repeat(4000)).is_ok());
        assert!(consensus("q", &[vote("m", "", "null")], "s").is_ok());
        assert!(consensus(&"q".repeat(2001), &[], "s").is_err());
        assert!(consensus("q", &vec![ok; 33], "s").is_err());
        assert!(consensus("q", &[], &"s".repeat(4001)).is_err());
        assert!(consensus("q", &[vote(&a257, "", "null")], "s").is_err());
        assert!(consensus("q", &[vote("m", &"r".repeat(2001), "null")], "s").is_err());
        let long_error = format!("\"{}\"", "e".repeat(1001));
        assert!(consensus("q", &[vote("m", "", &long_error)], "s").is_err());
    }
}
