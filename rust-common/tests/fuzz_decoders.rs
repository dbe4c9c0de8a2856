//! The decoders under arbitrary input (issue 10, "no input crashes a service"): random
//! JSON, mutated valid messages, extreme decimals and integers, raw bytes, deep nesting
//! and huge strings through the message types the money path reads. Each input is an
//! error or a message that is inside the contract (money |x| < 1e14) and survives a
//! round trip; never a panic.
//!
//! Property tests run proptest's default 256 cases each (`PROPTEST_CASES` overrides).

use std::fmt::Debug;
use std::fs;
use std::path::Path;

use moonbus_common::messages::*;
use proptest::collection::vec;
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// Every field that holds money in the types below (book levels are checked apart).
const MONEY_FIELDS: &[&str] = &[
    "quantity",
    "limit_price",
    "decision_price",
    "ref_price",
    "price",
    "bid",
    "ask",
    "size",
    "filled_quantity",
    "last_fill_price",
    "last_fill_quantity",
    "avg_fill_price",
    "fee",
    "max_order_notional",
    "max_position_notional",
    "max_gross_exposure",
    "min_cash",
    "max_daily_loss",
];

/// Keys the mutations and random objects draw from: the real field names, so that
/// random input often gets past the first field.
const KEYS: &[&str] = &[
    "client_order_id",
    "agent",
    "symbol",
    "venue",
    "side",
    "type",
    "quantity",
    "limit_price",
    "time_in_force",
    "reduce_only",
    "decision_price",
    "ref_price",
    "origin_ts",
    "ts",
    "status",
    "reason",
    "filled_quantity",
    "last_fill_price",
    "last_fill_quantity",
    "avg_fill_price",
    "fee",
    "slippage_bps",
    "timings",
    "received_ts",
    "price",
    "bid",
    "ask",
    "size",
    "seq",
    "bids",
    "asks",
    "set",
    "min_cash",
    "max_order_notional",
    "max_drawdown_pct",
];

fn valid_vector(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/vectors/valid")
        .join(name)
        .join("basic.json");
    serde_json::from_str(&fs::read_to_string(&path).expect("vector")).expect("vector JSON")
}

// ---------------------------------------------------------------- strategies

/// Decimal-looking text: plausible, at and past the range, and what is not a decimal.
fn decimal_text() -> impl Strategy<Value = String> {
    let plausible = (
        "-?",
        "(0|[1-9][0-9]{0,29})",
        proptest::option::of("[0-9]{1,32}"),
    )
        .prop_map(|(sign, int, frac)| match frac {
            Some(frac) => format!("{sign}{int}.{frac}"),
            None => format!("{sign}{int}"),
        });
    prop_oneof![
        4 => plausible,
        2 => prop::sample::select(vec![
            "79228162514264337593543950335",
            "-79228162514264337593543950335",
            "79228162514264337593543950336",
            "99999999999999.99999999999999",
            "100000000000000",
            "0.0000000000000000000000000001",
            "0.00000000000000000000000000001",
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "inf",
            "1e400",
            "1E-400",
            "-0",
            "0",
            "",
            "-",
            ".",
            "1.",
            ".5",
        ])
        .prop_map(str::to_string),
        1 => "[-+0-9eE.]{0,48}",
    ]
}

/// Integer-looking JSON text for u64 fields: in range, past u64, negative, float forms.
fn integer_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("1e400".to_string()),
        Just("-1e400".to_string()),
        "[1-9][0-9]{19,60}",
        "-?[0-9]{1,20}\\.[0-9]{1,5}",
        "[0-9]{1,5}[eE][-+]?[0-9]{1,4}",
    ]
}

fn token() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "BTC-USD",
        "btc-usd",
        "BTC.USD",
        "BTC-USD.>",
        "*",
        "sim",
        "all",
        "trading",
        "BUY",
        "SELL",
        "HOLD",
        "MARKET",
        "LIMIT",
        "GTC",
        "IOC",
        "FILLED",
        "REJECTED",
        "ACCEPTED",
        "trd-1",
        "a b",
    ])
    .prop_map(str::to_string)
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS.to_vec()).prop_map(str::to_string),
        1 => "[a-z_]{1,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("a JSON number is finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        decimal_text().prop_map(Value::String),
        token().prop_map(Value::String),
        ".{0,24}".prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a message: a field set to some value (or removed).
#[derive(Debug, Clone)]
enum Mutation {
    Set(String, Value),
    /// Raw JSON text for the value, for what a `Value` cannot hold (2^64, 1e400).
    SetRaw(String, String),
    Remove(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (key(), json()).prop_map(|(k, v)| Mutation::Set(k, v)),
        3 => (key(), decimal_text()).prop_map(|(k, v)| Mutation::Set(k, Value::String(v))),
        2 => (key(), integer_text()).prop_map(|(k, v)| Mutation::SetRaw(k, v)),
        1 => key().prop_map(Mutation::Remove),
    ]
}

/// `base` with the mutations applied, as JSON text.
fn mutate(base: &Value, mutations: &[Mutation]) -> String {
    let mut fields = base.as_object().cloned().unwrap_or_default();
    let mut raw = Vec::new();
    for m in mutations {
        match m {
            Mutation::Set(k, v) => {
                fields.insert(k.clone(), v.clone());
            }
            Mutation::SetRaw(k, v) => {
                fields.remove(k);
                raw.push((k.clone(), v.clone()));
            }
            Mutation::Remove(k) => {
                fields.remove(k);
            }
        }
    }
    let mut text = Value::Object(fields).to_string();
    for (k, v) in raw {
        // Splice `"k": v` in after the opening brace (a later duplicate key is an
        // error for strict types and last-wins elsewhere: both are fine inputs).
        let field = format!("{}:{v}", Value::String(k));
        let rest = text[1..].to_string();
        text = if rest.starts_with('}') {
            format!("{{{field}{rest}")
        } else {
            format!("{{{field},{rest}")
        };
    }
    text
}

// ---------------------------------------------------------------- the property

/// An error, or a message inside the contract that reads back as itself.
fn judge<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    raw: &str,
) -> Result<(), TestCaseError> {
    let message = match serde_json::from_str::<T>(raw) {
        Err(e) => {
            prop_assert!(!e.to_string().is_empty(), "an error says why");
            return Ok(());
        }
        Ok(message) => message,
    };
    let wire = serde_json::to_string(&message).expect("serializes");
    let again: T = serde_json::from_str(&wire)
        .map_err(|e| TestCaseError::fail(format!("cannot read what it wrote: {e}\n{wire}")))?;
    prop_assert_eq!(&again, &message);
    money_in_range(&serde_json::from_str(&wire).expect("JSON"))
}

/// Every money field of the written message is a decimal string below 1e14.
fn money_in_range(value: &Value) -> Result<(), TestCaseError> {
    let check = |text: &str| -> Result<(), TestCaseError> {
        let d = Decimal::from_str_exact(text)
            .map_err(|e| TestCaseError::fail(format!("money {text:?}: {e}")))?;
        prop_assert!(d.abs() < MONEY_LIMIT, "money {} out of range", text);
        Ok(())
    };
    match value {
        Value::Object(fields) => {
            for (k, v) in fields {
                match (k.as_str(), v) {
                    (k, Value::String(text)) if MONEY_FIELDS.contains(&k) => check(text)?,
                    ("bids" | "asks", Value::Array(levels)) => {
                        for level in levels {
                            for part in level.as_array().into_iter().flatten() {
                                check(part.as_str().unwrap_or("not a string"))?;
                            }
                        }
                    }
                    (_, v) => money_in_range(v)?,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                money_in_range(item)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every type the money path decodes, by its vector folder name.
fn judge_all(raw: &str) -> Result<(), TestCaseError> {
    judge::<OrderRequest>(raw)?;
    judge::<RiskCheckRequest>(raw)?;
    judge::<ExecutionReport>(raw)?;
    judge::<RiskCheckResult>(raw)?;
    judge::<CancelRequest>(raw)?;
    judge::<Tick>(raw)?;
    judge::<Book>(raw)?;
    judge::<LimitsRequest>(raw)?;
    judge::<PositionsReply>(raw)?;
    Ok(())
}

proptest! {
    #[test]
    fn random_json_is_an_error_or_a_message_inside_the_contract(value in json()) {
        judge_all(&value.to_string())?;
    }

    #[test]
    fn mutated_orders_and_reports(
        base in prop::sample::select(vec![
            "OrderRequest", "RiskCheckRequest", "ExecutionReport", "Tick", "Book",
            "LimitsRequest", "CancelRequest",
        ]),
        mutations in vec(mutation(), 1..5),
    ) {
        judge_all(&mutate(&valid_vector(base), &mutations))?;
    }

    #[test]
    fn structurally_valid_orders_with_extreme_numbers(
        quantity in decimal_text(),
        limit in proptest::option::of(decimal_text()),
        ts in integer_text(),
    ) {
        let mut order = valid_vector("OrderRequest");
        order["quantity"] = Value::String(quantity.clone());
        match &limit {
            Some(limit) => order["limit_price"] = Value::String(limit.clone()),
            None => {
                order["type"] = "MARKET".into();
                order.as_object_mut().unwrap().remove("limit_price");
            }
        }
        let raw = order.to_string().replace("1764130000000000000", &ts);
        judge::<OrderRequest>(&raw)?;
        // Accepted exactly when every number is inside the contract.
        let in_range = |text: &str| {
            text.parse::<PositiveMoney>().is_ok()
        };
        let expected = in_range(&quantity)
            && limit.as_deref().is_none_or(in_range)
            && ts.parse::<u64>().is_ok();
        prop_assert_eq!(serde_json::from_str::<OrderRequest>(&raw).is_ok(), expected, "{}", raw);
    }

    #[test]
    fn money_text_is_refused_or_inside_the_range(text in decimal_text()) {
        for result in [
            text.parse::<Money>().map(Money::get),
            text.parse::<PositiveMoney>().map(PositiveMoney::get),
            text.parse::<NonNegativeMoney>().map(NonNegativeMoney::get),
        ] {
            match result {
                Ok(value) => {
                    prop_assert!(value.abs() < MONEY_LIMIT);
                    // The point of the range: a product of two never overflows.
                    prop_assert!(value.checked_mul(value).is_some());
                    prop_assert!(value.checked_mul(MONEY_MAX).is_some());
                }
                Err(e) => prop_assert!(e.to_string().len() < 200, "{}", e),
            }
        }
    }

    #[test]
    fn raw_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<OrderRequest>(&bytes);
        let _ = serde_json::from_slice::<ExecutionReport>(&bytes);
        let _ = serde_json::from_slice::<RiskCheckRequest>(&bytes);
        let _ = serde_json::from_slice::<Tick>(&bytes);
        let _ = serde_json::from_slice::<Book>(&bytes);
    }
}

// ---------------------------------------------------------------- fixed cases

fn order_with(field: &str, raw_value: &str) -> String {
    let mut order = valid_vector("OrderRequest");
    order
        .as_object_mut()
        .unwrap()
        .insert(field.into(), Value::String("@@".into()));
    order.to_string().replace("\"@@\"", raw_value)
}

fn order_error(raw: &str) -> String {
    serde_json::from_str::<OrderRequest>(raw)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn the_issue_s_attack_is_refused_at_the_edge() {
    let max = "\"79228162514264337593543950335\"";
    assert!(order_error(&order_with("quantity", max)).contains("out of range"));
    assert!(order_error(&order_with("limit_price", max)).contains("out of range"));
    let mut check = valid_vector("RiskCheckRequest");
    check["quantity"] = "79228162514264337593543950335".into();
    let err = serde_json::from_value::<RiskCheckRequest>(check)
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn integers_beyond_u64_negative_or_fractional_are_refused() {
    for bad in [
        "18446744073709551616",
        "99999999999999999999999999999999999999",
        "-1",
        "-9223372036854775809",
        "1.5",
        "1e3",
        "1e400",
        "\"1\"",
        "true",
        "null",
    ] {
        let raw = order_with("ts", bad);
        assert!(
            serde_json::from_str::<OrderRequest>(&raw).is_err(),
            "ts {bad} accepted"
        );
    }
    let raw = order_with("ts", "18446744073709551615");
    assert_eq!(
        serde_json::from_str::<OrderRequest>(&raw).unwrap().ts,
        u64::MAX
    );
}

#[test]
fn nan_infinity_and_exponents_are_refused_as_money_and_as_json() {
    for bad in [
        "\"NaN\"",
        "\"Infinity\"",
        "\"-Infinity\"",
        "\"1e400\"",
        "\"1E5\"",
        "NaN",
        "Infinity",
        "1e400",
        "-0",
        "\"-0\"",
        "\"0\"",
        "\"-5\"",
    ] {
        let raw = order_with("quantity", bad);
        assert!(
            serde_json::from_str::<OrderRequest>(&raw).is_err(),
            "quantity {bad} accepted"
        );
    }
    // f64 fields: JSON has no NaN, and a number past f64 is an error, not infinity.
    for bad in ["NaN", "Infinity", "1e400", "-1e400"] {
        let raw = format!(r#"{{"max_drawdown_pct":{bad}}}"#);
        assert!(serde_json::from_str::<LimitsPatch>(&raw).is_err(), "{bad}");
    }
}

/// serde_json stops at 128 levels of nesting for what it builds (a typed value or a
/// `Value`): an error, never a stack overflow. What a tolerant message ignores (an
/// unknown field) is skipped without recursion, at any depth.
#[test]
fn deep_nesting_is_an_error_or_skipped_never_a_crash() {
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    assert!(serde_json::from_str::<Value>(&nested(127)).is_ok());
    let err = serde_json::from_str::<Value>(&nested(128))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("recursion limit exceeded"), "{err}");
    let deep = nested(1_000_000);
    assert!(serde_json::from_str::<Value>(&deep).is_err());
    // Strict messages refuse the unknown field before reading its value.
    assert!(order_error(&order_with("extra", &deep)).starts_with("unknown field `extra`"));
    // Where money or a token belongs, the first bracket is already wrong.
    assert!(order_error(&order_with("quantity", &deep)).contains("expected money"));
    let mut tick = valid_vector("Tick");
    tick["unknown"] = Value::Null;
    let tick = tick.to_string().replace("null", &deep);
    assert!(
        serde_json::from_str::<Tick>(&tick).is_ok(),
        "ignored, at any depth"
    );
    let objects = format!("{}1{}", "{\"a\":".repeat(1_000_000), "}".repeat(1_000_000));
    assert!(serde_json::from_str::<ExecutionReport>(&objects).is_err());
}

#[test]
fn huge_strings_are_refused_with_a_short_excerpt() {
    let huge = "9".repeat(1_000_000);
    for field in ["quantity", "client_order_id", "symbol", "agent"] {
        let err = order_error(&order_with(field, &format!("\"{huge}\"")));
        assert!(
            err.len() < 300,
            "{field}: the error quotes at most 40 characters"
        );
    }
    // A million-digit JSON number where an integer goes is an error too.
    assert!(order_error(&order_with("ts", &huge)).contains("number out of range"));
    let mut report = valid_vector("ExecutionReport");
    report["reason"] = Value::String("é".repeat(500_000));
    assert!(serde_json::from_value::<ExecutionReport>(report).is_ok());
}

/// A float read from the wire and written again reads back the same: serde_json's default
/// float parser can be one unit in the last place off, so `slippage_bps` of
/// 911657372889830080 came back as another number (found by `mutated_orders_and_reports`
/// in CI). The workspace enables serde_json's `float_roundtrip`.
#[test]
fn a_reports_float_reads_back_as_it_was_written() {
    let mut report = valid_vector("ExecutionReport");
    for text in [
        "911657372889830080",
        "0.30000000000000004",
        "-12.345678901234567",
        "1e300",
    ] {
        report["slippage_bps"] = serde_json::from_str(text).expect("a JSON number");
        judge::<ExecutionReport>(&report.to_string()).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}
