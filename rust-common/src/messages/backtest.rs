//! `backtest.api.run`: one run of the backtest engine, served by the Python backtest
//! workers (services/backtest/worker.py). Mirrored here so both sides judge the vectors
//! alike; no Rust service sends or serves it.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use super::api::ErrorBody;
use super::check::{self, quoted, validated_on_read, ValidationError};
use super::ids::{ClientOrderId, Interval, Symbol};

/// `^[a-z][a-z0-9_]{0,63}$`: a `[trading_agent]` key, a config section or key.
fn is_key(text: &str) -> bool {
    let mut bytes = text.bytes();
    text.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn key(text: &str) -> Result<(), ValidationError> {
    if is_key(text) {
        Ok(())
    } else {
        Err(ValidationError::new(format!(
            "invalid key {} (must match ^[a-z][a-z0-9_]{{0,63}}$)",
            quoted(text)
        )))
    }
}

/// `^[0-9a-f]{64}$`: a sha256 in lowercase hex.
fn sha256<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(text)
    } else {
        Err(de::Error::custom(format!(
            "invalid sha256 {} (must match ^[0-9a-f]{{64}}$)",
            quoted(&text)
        )))
    }
}

/// A parameter value as moonbus.toml holds it (money as a decimal string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// Text, or money as a decimal string.
    Text(String),
}

/// Parameters by key (`{"ma_fast": 10}`).
pub type Params = BTreeMap<String, ParamValue>;

/// One data file of a backtest, stored in the JetStream object store `backtest-data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// The object's name (= its sha256).
    pub name: ClientOrderId,
    /// The sha256 of the file's bytes, lowercase hex: checked by the worker.
    #[serde(deserialize_with = "sha256")]
    pub sha256: String,
    /// The original file name (1 to 255 characters).
    #[serde(deserialize_with = "check::chars::<1, 255, _>")]
    pub filename: String,
    /// The symbol of the bars, else the file's own or its name's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Symbol>,
    /// The bar interval, else inferred from the bars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
}

/// `backtest.api.run` request: one run of the backtest engine over `datasets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct BacktestRequest {
    /// The run's id (`^[A-Za-z0-9_-]{1,64}$`).
    pub run_id: ClientOrderId,
    /// 1 to 32 data files.
    pub datasets: Vec<Dataset>,
    /// The strategy, else moonbus.toml's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// `[trading_agent]` keys.
    #[serde(default)]
    pub params: Params,
    /// `{section: {key: value}}` over moonbus.toml.
    #[serde(default)]
    pub overrides: BTreeMap<String, Params>,
    /// Only bars with start_ts at or after this, ns since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ts: Option<u64>,
    /// Only bars with start_ts before this, ns since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ts: Option<u64>,
}

impl BacktestRequest {
    /// The rules of the model: 1 to 32 datasets, keys are identifiers, the window is
    /// not backwards.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(1..=32).contains(&self.datasets.len()) {
            return Err(ValidationError::new("1 to 32 datasets expected"));
        }
        if let Some(strategy) = &self.strategy {
            key(strategy)?;
        }
        self.params.keys().try_for_each(|k| key(k))?;
        for (section, params) in &self.overrides {
            key(section)?;
            params.keys().try_for_each(|k| key(k))?;
        }
        if let (Some(start), Some(end)) = (self.start_ts, self.end_ts) {
            if end <= start {
                return Err(ValidationError::new(format!(
                    "end_ts ({end}) must be after start_ts ({start})"
                )));
            }
        }
        Ok(())
    }
}

/// `backtest.api.run` reply: the run's summary, or an error, never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct BacktestReply {
    /// The request's run id.
    pub run_id: ClientOrderId,
    /// The parameters the run was asked for.
    #[serde(default)]
    pub params: Params,
    /// services/backtest/report.py `summarize`: metric -> value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why the run failed (`dataset_missing`, `dataset_corrupt`, `bad_data`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Which worker ran it (host:pid).
    #[serde(default)]
    pub worker: String,
    /// How long the run took (>= 0).
    #[serde(default, deserialize_with = "check::non_negative")]
    pub elapsed_ms: f64,
}

impl BacktestReply {
    /// The rules of the model: a summary or an error, never both; keys are identifiers.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.summary.is_some() == self.error.is_some() {
            return Err(ValidationError::new(
                "a backtest reply carries either a summary or an error",
            ));
        }
        self.params.keys().try_for_each(|k| key(k))
    }
}

validated_on_read!(BacktestRequest, BacktestReply);

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "3f0a9c1e5b7d2468ace013579bdf2468ace013579bdf02468ace13579bdf0246";

    #[test]
    fn cross_field_rules() {
        let request = |extra: &str| {
            serde_json::from_str::<BacktestRequest>(&format!(
                r#"{{"run_id":"r","datasets":[{{"name":"{H}","sha256":"{H}","filename":"a.csv"}}]{extra}}}"#
            ))
        };
        assert!(request("").is_ok());
        assert!(request(r#","start_ts":20,"end_ts":10"#).is_err());
        assert!(request(r#","params":{"Bad Key":1}"#).is_err());
        let parsed = request(r#","params":{"ma_fast":5,"gap":0.5,"cash":"10","on":true}"#).unwrap();
        assert_eq!(parsed.params["ma_fast"], ParamValue::Int(5));
        assert_eq!(parsed.params["gap"], ParamValue::Float(0.5));
        for reply in [
            r#"{"run_id":"r"}"#,
            r#"{"run_id":"r","summary":{},"error":{"code":"x","message":"y"}}"#,
        ] {
            assert!(
                serde_json::from_str::<BacktestReply>(reply).is_err(),
                "{reply}"
            );
        }
    }
}
