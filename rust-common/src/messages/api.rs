//! What every API and service shares: [`ErrorReply`] (every `*.api.*` failure),
//! [`ErrorEvent`] (`errors.<service>`) and [`VersionReply`].

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::check::{self, quoted};

/// `^[a-z][a-z0-9_]*$`, the `code` of an [`ErrorBody`].
fn is_error_code(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `ErrorBody.code`: `^[a-z][a-z0-9_]*$`.
fn error_code<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let code = String::deserialize(d)?;
    if is_error_code(&code) {
        Ok(code)
    } else {
        Err(de::Error::custom(format!(
            "invalid error code {} (must match ^[a-z][a-z0-9_]*$)",
            quoted(&code)
        )))
    }
}

/// `errors.<service>`: input a service rejected (not a request; those get an ErrorReply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// The service that rejected the input.
    pub service: String,
    /// The subject the input came on.
    pub subject: String,
    /// Why it was rejected.
    pub reason: String,
    /// At most 256 characters of the rejected input.
    #[serde(default, deserialize_with = "check::chars::<0, 256, _>")]
    pub excerpt: String,
    /// When it was rejected, ns since the epoch.
    pub ts: u64,
}

/// The body of an [`ErrorReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `^[a-z][a-z0-9_]*$`, e.g. `unknown_symbol`.
    #[serde(deserialize_with = "error_code")]
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
}

/// Every `*.api.*` endpoint answers this on failure, never silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The error code and message.
    pub error: ErrorBody,
}

impl ErrorReply {
    /// `code` must match `^[a-z][a-z0-9_]*$` (checked in debug builds).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        debug_assert!(is_error_code(&code), "invalid error code {code:?}");
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// `<service>.api.version` (md.api.version, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionReply {
    /// The service name.
    pub service: String,
    /// Its version.
    pub version: String,
    /// When it started, ns since the epoch.
    pub started_ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply() {
        let reply = ErrorReply::new("unknown_symbol", "no price for DOGE-USD");
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"error":{"code":"unknown_symbol","message":"no price for DOGE-USD"}}"#
        );
        assert!(
            serde_json::from_str::<ErrorReply>(r#"{"error":{"code":"Bad","message":""}}"#).is_err()
        );
    }
}
