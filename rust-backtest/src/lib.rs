//! `moonbus_sim`: the live rules as a Python module for the backtester
//! (services/backtest/engine.py). Messages cross as the contract's JSON, the same
//! bytes as on the bus; prices as decimal strings.

pub mod sim;

use moonbus_common::{bus, ExecutionReport};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rust_execution::{intake, reports};

use crate::sim::{Phase, Simulator as Inner};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

fn encode_all(reports: &[ExecutionReport]) -> Vec<String> {
    reports
        .iter()
        .map(|r| String::from_utf8_lossy(&bus::encode(r)).into_owned())
        .collect()
}

/// rust-risk's engine and rust-execution's paper venue on an event-time clock.
#[pyclass(module = "moonbus_sim", unsendable)]
struct Simulator {
    inner: Inner,
}

#[pymethods]
impl Simulator {
    /// `config_toml`: the text of moonbus.toml; `env`: `MOONBUS__SECTION__KEY` overrides.
    #[new]
    fn new(config_toml: &str, env: Vec<(String, String)>) -> PyResult<Self> {
        Ok(Self {
            inner: Inner::new(config_toml, env).map_err(value_error)?,
        })
    }

    /// Moves the clock to `ts` (ns) and trades `price` there; the reports of resting
    /// orders it filled (JSON).
    fn tick(&mut self, venue: &str, symbol: &str, price: &str, ts: u64) -> PyResult<Vec<String>> {
        self.inner.advance(ts).map_err(value_error)?;
        let reports = self.inner.tick(venue, symbol, price).map_err(value_error)?;
        Ok(encode_all(&reports))
    }

    /// An OrderRequest (JSON) as execution handles it: its reports (JSON), empty when
    /// its client_order_id was executed before. A malformed order is REJECTED, as live.
    fn submit(&mut self, order_json: &[u8]) -> Vec<String> {
        match intake::decode_order(order_json) {
            Ok(order) => encode_all(&self.inner.submit(order)),
            Err(reason) => {
                let ids = intake::RawIds::peek(order_json);
                let now = self.inner.now();
                let mut invalid = reports::invalid(ids.client_order_id, ids.symbol, reason, now);
                invalid.ts = now; // event time, like every report of a backtest
                encode_all(&[invalid])
            }
        }
    }

    /// AccountState (JSON) at the current time.
    fn account(&self) -> String {
        String::from_utf8_lossy(&bus::encode(&self.inner.account())).into_owned()
    }

    /// The Verdict (JSON) of a symbol, None if risk has none.
    fn verdict(&self, symbol: &str) -> Option<String> {
        let verdict = self.inner.verdict(symbol)?;
        Some(String::from_utf8_lossy(&bus::encode(&verdict)).into_owned())
    }

    fn equity(&self) -> String {
        self.inner.equity().to_string()
    }

    fn now(&self) -> u64 {
        self.inner.now()
    }

    /// Records the equity now (one point of the equity curve).
    fn sample(&mut self) {
        self.inner.sample();
    }

    /// The times and equities recorded so far (two lists), and forgets them.
    fn take_curve(&mut self) -> (Vec<u64>, Vec<String>) {
        self.inner
            .take_curve()
            .into_iter()
            .map(|(t, e)| (t, e.to_string()))
            .unzip()
    }

    /// One symbol's bars for `advance_to` (prices as decimal text).
    fn add_series(
        &mut self,
        venue: &str,
        symbol: &str,
        start: Vec<u64>,
        open: Vec<String>,
        close: Vec<String>,
        interval_ns: u64,
    ) -> PyResult<()> {
        self.inner
            .add_series(venue, symbol, start, open, close, interval_ns)
            .map_err(value_error)
    }

    /// Runs the bars up to bar time `t` having reached `phase` (1 opened, 2 closed,
    /// 3 sampled); the reports of resting orders they filled (JSON).
    fn advance_to(&mut self, t: u64, phase: u8) -> PyResult<Vec<String>> {
        let phase = match phase {
            1 => Phase::Opened,
            2 => Phase::Closed,
            3 => Phase::Sampled,
            _ => return Err(value_error(format!("phase {phase} is not 1, 2 or 3"))),
        };
        self.inner.advance_to(t, phase).map_err(value_error)?;
        Ok(encode_all(&self.inner.take_reports()))
    }
}

/// Whether `data` is a Tick by the contract's Rust types (nothing built for Python).
#[pyfunction]
fn is_tick(data: &[u8]) -> bool {
    serde_json::from_slice::<moonbus_common::Tick>(data).is_ok()
}

#[pymodule]
fn moonbus_sim(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Simulator>()?;
    m.add_function(wrap_pyfunction!(is_tick, m)?)?;
    Ok(())
}
