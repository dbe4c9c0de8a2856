//! The market state: the latest tick and the bar series of every (venue, symbol),
//! and the answers to the price/prices/history queries. Pure data, no I/O; the
//! engine owns the one instance and does the publishing.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use async_nats::Subject;
use moonbus_common::{
    subjects, Bar, HistoryRequest, Interval, PriceRequest, PricesReply, PricesRequest, Symbol,
    Tick, Venue,
};

use crate::bars::{BarSeries, HISTORY_LEN, INTERVALS};

/// A query refused, as the `{"error": {"code", "message"}}` reply will say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

/// The latest tick and the bars of one symbol on one venue, with their subjects
/// built once at start-up (cloning a `Subject` does not allocate).
struct Series {
    tick_subject: Subject,
    latest: Option<Tick>,
    bars: Vec<(Subject, BarSeries)>,
}

pub struct Market {
    venue: Venue,
    /// Index = the symbol's index in the feed's symbol list.
    series: Vec<Series>,
    slots: HashMap<Symbol, usize>,
}

impl Market {
    pub fn new(venue: &Venue, symbols: &[Symbol]) -> Result<Self> {
        let intervals: Vec<Interval> = INTERVALS
            .iter()
            .map(|i| i.parse().with_context(|| format!("bar interval {i}")))
            .collect::<Result<_>>()?;
        let series = symbols
            .iter()
            .map(|symbol| {
                let bars = intervals
                    .iter()
                    .map(|interval| {
                        let series = BarSeries::new(interval.clone())
                            .with_context(|| format!("bar interval {interval} has no length"))?;
                        Ok((subjects::bar(interval, venue, symbol).into(), series))
                    })
                    .collect::<Result<_>>()?;
                Ok(Series {
                    tick_subject: subjects::tick(venue, symbol).into(),
                    latest: None,
                    bars,
                })
            })
            .collect::<Result<_>>()?;
        let slots = symbols
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (s, i))
            .collect();
        Ok(Self {
            venue: venue.clone(),
            series,
            slots,
        })
    }

    pub fn tick_subject(&self, index: usize) -> Option<&Subject> {
        self.series.get(index).map(|s| &s.tick_subject)
    }

    /// Keeps `tick` as the latest of its symbol and feeds its bar series; the bars
    /// it closes are appended to `closed` (a buffer the caller reuses).
    pub fn record(&mut self, index: usize, tick: Tick, closed: &mut Vec<(Subject, Bar)>) {
        let Some(series) = self.series.get_mut(index) else {
            return;
        };
        for (subject, bars) in &mut series.bars {
            if let Some(bar) = bars.on_tick(&tick) {
                closed.push((subject.clone(), bar));
            }
        }
        series.latest = Some(tick);
    }

    /// Closes every open bar whose interval ended by `now_ns`.
    pub fn close_due(&mut self, now_ns: u64, closed: &mut Vec<(Subject, Bar)>) {
        for series in &mut self.series {
            for (subject, bars) in &mut series.bars {
                if let Some(bar) = bars.close_due(now_ns) {
                    closed.push((subject.clone(), bar));
                }
            }
        }
    }

    /// `md.api.price`.
    pub fn price(&self, request: &PriceRequest) -> Result<Tick, ApiError> {
        let series = self.series_of(&request.symbol, request.venue.as_ref())?;
        series.latest.clone().ok_or_else(|| {
            ApiError::new(
                "no_price",
                format!("no tick for {} on {} yet", request.symbol, self.venue),
            )
        })
    }

    /// `md.api.prices`: every symbol with a price; the others (unknown, or no tick
    /// yet) are named once each in `missing`, in request order.
    pub fn prices(&self, request: &PricesRequest) -> PricesReply {
        let mut reply = PricesReply {
            prices: Default::default(),
            missing: Vec::new(),
        };
        let mut missing = HashSet::new();
        for symbol in &request.symbols {
            let latest = self
                .series_of(symbol, request.venue.as_ref())
                .ok()
                .and_then(|s| s.latest.as_ref());
            match latest {
                Some(tick) => {
                    reply.prices.insert(symbol.to_string(), tick.clone());
                }
                None => {
                    if missing.insert(symbol.as_str()) {
                        reply.missing.push(symbol.to_string());
                    }
                }
            }
        }
        reply
    }

    /// `md.api.history`: the last `limit` closed bars, oldest first (at most
    /// the 1000 kept per series).
    pub fn history(&self, request: &HistoryRequest) -> Result<Vec<Bar>, ApiError> {
        let series = self.series_of(&request.symbol, request.venue.as_ref())?;
        let (_, bars) = series
            .bars
            .iter()
            .find(|(_, bars)| *bars.interval() == request.interval)
            .ok_or_else(|| {
                ApiError::new(
                    "unknown_interval",
                    format!(
                        "interval {} is not served; the intervals are {}",
                        request.interval,
                        INTERVALS.join(", ")
                    ),
                )
            })?;
        let limit = usize::try_from(request.limit).unwrap_or(HISTORY_LEN);
        Ok(bars.last(limit))
    }

    fn series_of(&self, symbol: &Symbol, venue: Option<&Venue>) -> Result<&Series, ApiError> {
        if let Some(venue) = venue.filter(|v| **v != self.venue) {
            return Err(ApiError::new(
                "unknown_venue",
                format!("no feed for venue {venue}; the venue is {}", self.venue),
            ));
        }
        self.slots
            .get(symbol.as_str())
            .and_then(|&i| self.series.get(i))
            .ok_or_else(|| {
                ApiError::new(
                    "unknown_symbol",
                    format!("{symbol} is not a configured symbol"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::PositiveMoney;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_764_129_600 * SEC;

    fn market() -> Market {
        let symbols: Vec<Symbol> = ["BTC-USD", "ETH-USD"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        Market::new(&Venue::sim(), &symbols).unwrap()
    }

    fn tick(symbol: &str, price: &str, seq: u64, ts: u64) -> Tick {
        Tick {
            venue: Venue::sim(),
            symbol: symbol.parse().unwrap(),
            price: price.parse::<PositiveMoney>().unwrap(),
            bid: None,
            ask: None,
            size: Some("1".parse().unwrap()),
            seq,
            ts,
        }
    }

    fn price_request(json: &str) -> PriceRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn subjects_are_built_from_venue_and_symbol() {
        let mut m = market();
        assert_eq!(
            m.tick_subject(1).map(|s| s.as_str()),
            Some("md.tick.sim.ETH-USD")
        );
        let mut closed = Vec::new();
        m.record(0, tick("BTC-USD", "1", 1, T0), &mut closed);
        m.close_due(T0 + 60 * SEC, &mut closed);
        let subjects: Vec<&str> = closed.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(subjects, ["md.bar.1s.sim.BTC-USD", "md.bar.1m.sim.BTC-USD"]);
    }

    #[test]
    fn price_is_the_latest_tick_or_a_coded_error() {
        let mut m = market();
        let mut closed = Vec::new();
        let err = m
            .price(&price_request(r#"{"symbol":"BTC-USD"}"#))
            .unwrap_err();
        assert_eq!(err.code, "no_price");
        m.record(0, tick("BTC-USD", "97000", 1, T0), &mut closed);
        m.record(0, tick("BTC-USD", "97001.5", 2, T0 + 1), &mut closed);
        let latest = m
            .price(&price_request(r#"{"symbol":"BTC-USD","venue":"sim"}"#))
            .unwrap();
        assert_eq!(
            (latest.price.to_string(), latest.seq),
            ("97001.5".into(), 2)
        );
        let err = m
            .price(&price_request(r#"{"symbol":"DOGE-USD"}"#))
            .unwrap_err();
        assert_eq!(err.code, "unknown_symbol");
        let err = m
            .price(&price_request(r#"{"symbol":"BTC-USD","venue":"binance"}"#))
            .unwrap_err();
        assert_eq!(err.code, "unknown_venue");
    }

    #[test]
    fn prices_name_the_missing_once() {
        let mut m = market();
        m.record(0, tick("BTC-USD", "97000", 1, T0), &mut Vec::new());
        let request: PricesRequest =
            serde_json::from_str(r#"{"symbols":["BTC-USD","DOGE-USD","ETH-USD","DOGE-USD"]}"#)
                .unwrap();
        let reply = m.prices(&request);
        assert_eq!(reply.prices.keys().collect::<Vec<_>>(), ["BTC-USD"]);
        assert_eq!(reply.missing, ["DOGE-USD", "ETH-USD"]);
    }

    #[test]
    fn history_by_interval_oldest_first() {
        let mut m = market();
        let mut closed = Vec::new();
        for i in 0..5 {
            m.record(
                1,
                tick("ETH-USD", &format!("{}", 3500 + i), i, T0 + i * SEC),
                &mut closed,
            );
        }
        m.close_due(T0 + 60 * SEC, &mut closed);
        let request = |json: &str| serde_json::from_str::<HistoryRequest>(json).unwrap();
        let bars = m
            .history(&request(
                r#"{"symbol":"ETH-USD","interval":"1s","limit":3}"#,
            ))
            .unwrap();
        let closes: Vec<String> = bars.iter().map(|b| b.close.to_string()).collect();
        assert_eq!(closes, ["3502", "3503", "3504"]);
        let bars = m.history(&request(r#"{"symbol":"ETH-USD"}"#)).unwrap();
        assert_eq!(
            bars.len(),
            1,
            "the default interval is 1m: one bar of 5 ticks"
        );
        assert_eq!(bars[0].trades, 5);
        let err = m
            .history(&request(r#"{"symbol":"ETH-USD","interval":"5m"}"#))
            .unwrap_err();
        assert_eq!(err.code, "unknown_interval");
        let err = m.history(&request(r#"{"symbol":"XRP-USD"}"#)).unwrap_err();
        assert_eq!(err.code, "unknown_symbol");
    }
}
