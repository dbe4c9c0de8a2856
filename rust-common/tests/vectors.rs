//! The contract vectors (proto/vectors), judged by the Rust types as Python judges them
//! (tests/test_contract.py): every `valid/<Message>/*.json` deserializes, survives a
//! round trip, and is written in the Python-canonical form; every `invalid/` one fails.

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use moonbus_common::messages::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// The message types under test, by the name of their vector folder: `judge` runs a
/// vector through the type of that name (`None`: no such type, the test fails).
macro_rules! message_types {
    ($($ty:ident),+ $(,)?) => {
        const NAMES: &[&str] = &[$(stringify!($ty)),+];

        fn judge(name: &str, expect_valid: bool, raw: &str, schema: &Value) -> Option<Result<(), String>> {
            match name {
                $(stringify!($ty) if expect_valid => Some(valid::<$ty>(raw, schema)),
                  stringify!($ty) => Some(invalid::<$ty>(raw)),)+
                _ => None,
            }
        }
    };
}

message_types! {
    Tick, Bar, Book, PriceAlert, ArbOpportunity, FeedStatus, Verdict, AccountState, Position,
    RiskCheckRequest, RiskCheckResult, KillSwitchRequest, KillSwitchState, RiskLimits,
    LimitsPatch, LimitsRequest, LimitsReply, PositionsRequest, PositionsReply,
    Sentiment, Signal, Consensus, SwarmAskRequest, OrderRequest, CancelRequest,
    ExecutionReport, ErrorEvent, ErrorReply, PriceRequest, PriceReply, PricesRequest,
    PricesReply, HistoryRequest, HistoryReply, MonitorStartRequest, MonitorStopRequest,
    MonitorStatusRequest, MonitorStatusReply, VersionReply, BacktestRequest, BacktestReply,
    LiveVenueStatus, Reconciliation, ProtectionState,
}

fn proto() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

/// Sorted (message name, file) pairs under `proto/vectors/<kind>`.
fn vectors(kind: &str) -> Vec<(String, PathBuf)> {
    let root = proto().join("vectors").join(kind);
    let mut found = Vec::new();
    for folder in fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        for file in fs::read_dir(&folder).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "json") {
                found.push((name.clone(), file));
            }
        }
    }
    found.sort();
    found
}

fn valid<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    raw: &str,
    schema: &Value,
) -> Result<(), String> {
    let message: T = serde_json::from_str(raw).map_err(|e| format!("rejected: {e}"))?;
    let wire = serde_json::to_string(&message).map_err(|e| format!("cannot serialize: {e}"))?;
    let again: T = serde_json::from_str(&wire)
        .map_err(|e| format!("cannot read back what it wrote: {e}\n  wrote: {wire}"))?;
    if again != message {
        return Err(format!(
            "round trip changed it:\n  read:  {message:?}\n  again: {again:?}"
        ));
    }
    let written: Value = serde_json::from_str(&wire).unwrap();
    let input: Value = serde_json::from_str(raw).unwrap();
    let expected = canonical(&input, schema, schema);
    same("$", &expected, &written).map_err(|e| {
        format!("written form differs from Python's encode(): {e}\n  expected: {expected}\n  written:  {written}")
    })
}

fn invalid<T: DeserializeOwned + Debug>(raw: &str) -> Result<(), String> {
    match serde_json::from_str::<T>(raw) {
        Ok(message) => Err(format!("accepted: {message:?}")),
        Err(_) => Ok(()),
    }
}

/// What Python's `encode(decode(raw))` writes, derived from the message's JSON Schema:
/// nulls left out (exclude_none), unknown fields dropped, defaults filled in.
fn canonical(value: &Value, schema: &Value, root: &Value) -> Value {
    let schema = resolve(schema, root);
    match value {
        Value::Object(fields) => {
            let mut out = Map::new();
            if let Some(Value::Object(properties)) = schema.get("properties") {
                for (key, property) in properties {
                    match fields.get(key) {
                        Some(Value::Null) | None => {
                            if let Some(default) = property.get("default").filter(|d| !d.is_null())
                            {
                                out.insert(key.clone(), default.clone());
                            }
                        }
                        Some(v) => {
                            out.insert(key.clone(), canonical(v, property, root));
                        }
                    }
                }
            } else if let Some(entry) = schema.get("additionalProperties").filter(|s| s.is_object())
            {
                for (key, v) in fields {
                    if !v.is_null() {
                        out.insert(key.clone(), canonical(v, entry, root));
                    }
                }
            } else {
                return value.clone();
            }
            Value::Object(out)
        }
        Value::Array(items) => match schema.get("items").filter(|s| s.is_object()) {
            Some(item) => Value::Array(items.iter().map(|v| canonical(v, item, root)).collect()),
            None => value.clone(),
        },
        _ => value.clone(),
    }
}

/// Follows `$ref: #/$defs/X` and picks the non-null branch of `anyOf: [X, null]`.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    if let Some(Value::String(reference)) = schema.get("$ref") {
        let name = reference.strip_prefix("#/$defs/").expect("local $ref");
        return resolve(&root["$defs"][name], root);
    }
    if let Some(Value::Array(branches)) = schema.get("anyOf") {
        if let Some(branch) = branches
            .iter()
            .find(|b| b.get("type") != Some(&Value::from("null")))
        {
            return resolve(branch, root);
        }
    }
    schema
}

/// Equal JSON, where 30 and 30.0 are the same number (Python writes floats as 30.0)
/// and strings, money included, must be identical.
fn same(path: &str, expected: &Value, written: &Value) -> Result<(), String> {
    match (expected, written) {
        (Value::Number(a), Value::Number(b)) => {
            let equal = match (a.as_u64(), b.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => a.as_f64() == b.as_f64(),
            };
            if equal {
                Ok(())
            } else {
                Err(format!("{path}: {a} != {b}"))
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => same(&format!("{path}.{key}"), x, y)?,
                    (Some(x), None) => return Err(format!("{path}.{key}: missing (expected {x})")),
                    (None, Some(y)) => return Err(format!("{path}.{key}: unexpected {y}")),
                    (None, None) => unreachable!(),
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same(&format!("{path}[{i}]"), x, y)?;
            }
            Ok(())
        }
        _ if expected == written => Ok(()),
        _ => Err(format!("{path}: expected {expected}, written {written}")),
    }
}

fn run(kind: &str) {
    let files = vectors(kind);
    assert!(!files.is_empty(), "no vectors in proto/vectors/{kind}");
    let mut failures = Vec::new();
    for (name, path) in &files {
        let shown = path
            .strip_prefix(proto())
            .unwrap_or(path)
            .display()
            .to_string();
        let raw = fs::read_to_string(path).unwrap();
        let schema_path = proto().join("schemas").join(format!("{name}.json"));
        let schema: Value = match fs::read_to_string(&schema_path) {
            Ok(text) => serde_json::from_str(&text).unwrap(),
            Err(e) => {
                failures.push(format!("{shown}: no schema {}: {e}", schema_path.display()));
                continue;
            }
        };
        match judge(name, kind == "valid", &raw, &schema) {
            None => failures.push(format!("{shown}: no Rust type named {name} in messages/")),
            Some(Err(why)) => failures.push(format!("{shown}: {why}")),
            Some(Ok(())) => {}
        }
    }
    println!("{} {kind} vectors, {} failed", files.len(), failures.len());
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}

#[test]
fn valid_vectors_are_accepted_round_trip_and_written_canonically() {
    run("valid");
}

#[test]
fn invalid_vectors_are_rejected() {
    run("invalid");
}

/// Every type in the list has vectors of both kinds (a typo in the list cannot hide).
#[test]
fn every_listed_type_has_vectors() {
    for name in NAMES {
        for kind in ["valid", "invalid"] {
            let folder = proto().join("vectors").join(kind).join(name);
            let count = fs::read_dir(&folder).map_or(0, |entries| entries.count());
            assert!(count > 0, "no vectors in {}", folder.display());
        }
    }
}
