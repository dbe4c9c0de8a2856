//! The `[market_data]` section of moonbus.toml, checked once at start-up: a bad
//! value stops the service with a message that names the key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use moonbus_common::config::SystemConfig;
use moonbus_common::{PositiveMoney, Symbol, Venue};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::alerts::Threshold;
use crate::arb::ArbSettings;
use crate::bars::{Intervals, KEPT_BAR_BYTES};
use crate::connectors::{
    BinanceConfig, BirdeyeConfig, CoinbaseConfig, HyperliquidConfig, Section, VenueSections,
};
use crate::feed::FeedKind;
use crate::market::MarketSettings;
use crate::replay::{ReplayClock, ReplaySettings, Speed};
use crate::sim::{GbmParams, SimBooks, SimSettings};

/// Start price of a symbol not listed in `[market_data.start_prices]`.
const DEFAULT_START_PRICE: Decimal = Decimal::ONE_HUNDRED;
/// A wider spread is surely a typo (and would let the bid approach zero).
const MAX_SPREAD_BPS: f64 = 1000.0;

/// `[market_data]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketDataConfig {
    /// The feeds to run: sim, replay, binance, aster, coinbase, hyperliquid, birdeye.
    pub feeds: Vec<String>,
    pub seed: u64,
    pub tick_interval_ms: u64,
    pub volatility: f64,
    pub drift: f64,
    pub spread_bps: f64,
    pub jump_probability: f64,
    pub jump_pct: f64,
    /// Symbol -> decimal string. Keys are matched case-insensitively, because an
    /// environment override (`MOONBUS__MARKET_DATA__START_PRICES__BTC-USD`) arrives lowercased.
    pub start_prices: BTreeMap<String, String>,
    pub bar_intervals: Vec<String>,
    pub history_len: usize,
    pub history_budget_mb: u64,
    pub max_series: usize,
    pub book_depth: usize,
    pub book_interval_ms: u64,
    pub book_step_bps: f64,
    pub stale_after_ms: u64,
    pub alert_threshold_pct: f64,
    pub alert_window_s: f64,
    /// Symbol -> threshold %, case-insensitive keys like `start_prices`.
    pub alert_thresholds: BTreeMap<String, f64>,
    pub metrics_addr: String,
    pub publish_timeout_ms: u64,
    pub replay_files: Vec<String>,
    pub replay_speed: f64,
    pub replay_venue: String,
    pub replay_loop: bool,
    /// "wall" (ticks stamped when published) or "file" (ticks keep the file's `ts`,
    /// the replay's bars follow it): see replay.rs.
    pub replay_clock: String,
    /// `[market_data.<venue>]`: the live connectors' settings (src/connectors/).
    pub binance: Section<BinanceConfig>,
    /// `[market_data.aster]`: the Binance family's futures flavour.
    pub aster: Section<BinanceConfig>,
    pub coinbase: Section<CoinbaseConfig>,
    pub hyperliquid: Section<HyperliquidConfig>,
    pub birdeye: Section<BirdeyeConfig>,
    /// `[market_data.arb]`: the cross-venue arbitrage detector (arb.rs).
    pub arb: ArbConfig,
}

/// A number of basis points as written: an integer, a float (`4.5`) or a decimal
/// string (`"4.5"`, as an environment override may bring it); read as an exact decimal.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Bps {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Bps {
    fn decimal(&self, key: &str) -> Result<Decimal> {
        let text = match self {
            Bps::Int(i) => return Ok(Decimal::from(*i)),
            // Display writes the shortest form that reads back as this f64 (never an
            // exponent): what was written in the file.
            Bps::Float(f) if f.is_finite() => f.to_string(),
            Bps::Float(f) => bail!("[market_data.arb] {key} = {f}: not a number of bps"),
            Bps::Text(t) => t.trim().to_string(),
        };
        text.parse::<Decimal>()
            .with_context(|| format!("[market_data.arb] {key} = {text:?}: not a number of bps"))
    }
}

/// `[market_data.arb]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArbConfig {
    /// On by default: it only runs for a symbol with books from two venues or more.
    pub enabled: bool,
    /// Publish an opportunity only above this net spread (bps, >= 0).
    pub min_net_bps: Bps,
    /// At most one `md.arb.<symbol>` per this many ms, unless the net spread improves.
    pub min_interval_ms: u64,
    /// Taker fee (bps) of a venue not in `fees_bps`.
    pub default_fee_bps: Bps,
    /// Venue -> taker fee, bps (0 ..= 1000).
    pub fees_bps: BTreeMap<String, Bps>,
}

impl Default for ArbConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_net_bps: Bps::Int(5),
            min_interval_ms: 1000,
            default_fee_bps: Bps::Int(10),
            fees_bps: BTreeMap::new(),
        }
    }
}

/// A fee above this (10 %) is surely a typo (and would make selling pay almost nothing).
const MAX_FEE_BPS: Decimal = Decimal::ONE_THOUSAND;

fn parse_arb(arb: &ArbConfig) -> Result<ArbSettings> {
    let fee = |key: &str, value: &Bps| -> Result<Decimal> {
        let fee = value.decimal(key)?;
        if fee.is_sign_negative() && !fee.is_zero() || fee > MAX_FEE_BPS {
            bail!("[market_data.arb] {key} = {fee}: must be 0 ..= {MAX_FEE_BPS} bps");
        }
        Ok(fee.normalize())
    };
    let min_net_bps = arb.min_net_bps.decimal("min_net_bps")?;
    if min_net_bps.is_sign_negative() && !min_net_bps.is_zero()
        || min_net_bps > Decimal::from(100_000)
    {
        bail!("[market_data.arb] min_net_bps = {min_net_bps}: must be 0 ..= 100000");
    }
    if arb.min_interval_ms > 86_400_000 {
        bail!(
            "[market_data.arb] min_interval_ms = {}: must be 0 ..= 86400000",
            arb.min_interval_ms
        );
    }
    let fees_bps = arb
        .fees_bps
        .iter()
        .map(|(venue, value)| {
            let parsed: Venue = venue.to_ascii_lowercase().parse().with_context(|| {
                format!("[market_data.arb.fees_bps]: {venue:?} is not a valid venue")
            })?;
            Ok((parsed, fee(&format!("fees_bps.{venue}"), value)?))
        })
        .collect::<Result<_>>()?;
    Ok(ArbSettings {
        enabled: arb.enabled,
        min_net_bps: min_net_bps.normalize(),
        min_interval_ns: arb.min_interval_ms * 1_000_000,
        default_fee_bps: fee("default_fee_bps", &arb.default_fee_bps)?,
        fees_bps,
    })
}

impl Default for MarketDataConfig {
    fn default() -> Self {
        Self {
            feeds: vec!["sim".into()],
            seed: 42,
            tick_interval_ms: 200,
            volatility: 0.8,
            drift: 0.0,
            spread_bps: 2.0,
            jump_probability: 0.0005,
            jump_pct: 1.5,
            start_prices: BTreeMap::new(),
            bar_intervals: ["1s", "1m", "5m", "15m", "1h"].map(String::from).to_vec(),
            history_len: 1000,
            history_budget_mb: 40,
            max_series: 20_000,
            book_depth: 10,
            book_interval_ms: 1000,
            book_step_bps: 1.0,
            stale_after_ms: 10_000,
            alert_threshold_pct: 2.0,
            alert_window_s: 60.0,
            alert_thresholds: BTreeMap::new(),
            metrics_addr: "127.0.0.1:9100".into(),
            publish_timeout_ms: 100,
            replay_files: Vec::new(),
            replay_speed: 1.0,
            replay_venue: "replay".into(),
            replay_loop: false,
            replay_clock: "wall".into(),
            binance: Section::default(),
            aster: Section::default(),
            coinbase: Section::default(),
            hyperliquid: Section::default(),
            birdeye: Section::default(),
            arb: ArbConfig::default(),
        }
    }
}

impl VenueSections for MarketDataConfig {
    fn binance(&self) -> &Section<BinanceConfig> {
        &self.binance
    }

    fn aster(&self) -> &Section<BinanceConfig> {
        &self.aster
    }

    fn coinbase(&self) -> &Section<CoinbaseConfig> {
        &self.coinbase
    }

    fn hyperliquid(&self) -> &Section<HyperliquidConfig> {
        &self.hyperliquid
    }

    fn birdeye(&self) -> &Section<BirdeyeConfig> {
        &self.birdeye
    }
}

/// Everything market-data runs with, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub feeds: Vec<FeedKind>,
    pub sim: SimSettings,
    pub sim_books: Option<SimBooks>,
    pub market: MarketSettings,
    pub replay: ReplaySettings,
    /// `None`: no metrics endpoint.
    pub metrics_addr: Option<String>,
    pub publish_timeout: Duration,
}

impl Settings {
    pub fn from_config(system: &SystemConfig, md: &MarketDataConfig) -> Result<Self> {
        let feeds = parse_feeds(&md.feeds)?;
        let sim = SimSettings::from_config(system, md)?;
        let intervals = Intervals::parse(&md.bar_intervals)?;
        let positive = |key: &str, value: u64| -> Result<u64> {
            if value == 0 {
                bail!("[market_data] {key} = 0: must be at least 1");
            }
            Ok(value)
        };
        let book_interval =
            Duration::from_millis(positive("book_interval_ms", md.book_interval_ms)?);
        if md.book_depth > 1000 {
            bail!(
                "[market_data] book_depth = {}: must be 0..=1000 (0 = no sim books)",
                md.book_depth
            );
        }
        if !(md.book_step_bps.is_finite() && md.book_step_bps > 0.0 && md.book_step_bps <= 1000.0) {
            bail!(
                "[market_data] book_step_bps = {}: must be > 0 and <= 1000",
                md.book_step_bps
            );
        }
        let sim_books = (md.book_depth > 0).then_some(SimBooks {
            depth: md.book_depth,
            step_bps: md.book_step_bps,
            interval: book_interval,
        });
        // Bounded memory: the kept bars of all the series fit the budget.
        let series = (sim.symbols.len() * feeds.len()).max(1);
        let budget = usize::try_from(md.history_budget_mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20);
        let history = md
            .history_len
            .min(budget / (KEPT_BAR_BYTES * intervals.len() * series));
        if history < md.history_len {
            tracing::warn!(
                history_len = md.history_len,
                kept = history,
                series,
                "[market_data] history_budget_mb holds fewer bars than history_len for this many symbols"
            );
        }
        Ok(Self {
            market: MarketSettings {
                intervals,
                history,
                max_series: positive("max_series", md.max_series as u64)? as usize,
                book_depth: md.book_depth.max(1),
                book_interval_ns: book_interval.as_nanos() as u64,
                stale_after_ns: positive("stale_after_ms", md.stale_after_ms)? * 1_000_000,
                default_threshold: threshold(
                    "alert_threshold_pct",
                    md.alert_threshold_pct,
                    md.alert_window_s,
                    true,
                )?,
                thresholds: parse_thresholds(md)?,
                symbols: sim.symbols.iter().map(|(s, _)| s.clone()).collect(),
                arb: parse_arb(&md.arb)?,
            },
            replay: parse_replay(md, &feeds)?,
            metrics_addr: Some(md.metrics_addr.trim().to_string()).filter(|a| !a.is_empty()),
            publish_timeout: Duration::from_millis(positive(
                "publish_timeout_ms",
                md.publish_timeout_ms,
            )?),
            feeds,
            sim,
            sim_books,
        })
    }
}

/// A monitor's threshold, checked like `md.api.monitor.start` checks it;
/// `optional`: 0 means no monitor.
fn threshold(key: &str, pct: f64, window_s: f64, optional: bool) -> Result<Option<Threshold>> {
    if optional && pct == 0.0 {
        return Ok(None);
    }
    if !(pct > 0.0 && pct <= 100.0) {
        bail!("[market_data] {key} = {pct}: must be > 0 and <= 100");
    }
    if !(window_s > 0.0 && window_s <= 86_400.0) {
        bail!("[market_data] alert_window_s = {window_s}: must be > 0 and <= 86400");
    }
    Ok(Some(Threshold {
        threshold_pct: pct,
        window_s,
    }))
}

fn parse_thresholds(md: &MarketDataConfig) -> Result<HashMap<Symbol, Threshold>> {
    md.alert_thresholds
        .iter()
        .map(|(key, pct)| {
            let symbol: Symbol = key.to_ascii_uppercase().parse().with_context(|| {
                format!("[market_data.alert_thresholds]: {key:?} is not a valid symbol")
            })?;
            let name = format!("alert_thresholds.{key}");
            let threshold = threshold(&name, *pct, md.alert_window_s, false)?;
            Ok((symbol, threshold.expect("not optional")))
        })
        .collect()
}

/// The slowest `replay_speed` (a second of the file takes 11.6 days).
const MIN_REPLAY_SPEED: f64 = 1e-6;

fn parse_replay(md: &MarketDataConfig, feeds: &[FeedKind]) -> Result<ReplaySettings> {
    let venue: Venue = md
        .replay_venue
        .parse()
        .with_context(|| format!("[market_data] replay_venue = {:?}", md.replay_venue))?;
    let speed = match md.replay_speed {
        0.0 => Speed::AsFastAsPossible,
        // Slower than MIN_REPLAY_SPEED, a file's span (up to u64::MAX ns) divided by the
        // speed overflows the replay's Duration/Instant (a panic mid-replay).
        s if s.is_finite() && s >= MIN_REPLAY_SPEED => Speed::Times(s),
        s => bail!("[market_data] replay_speed = {s}: must be at least {MIN_REPLAY_SPEED} (1 = real pace), or 0 = as fast as possible"),
    };
    if feeds.contains(&FeedKind::Replay) && md.replay_files.is_empty() {
        bail!("[market_data] feeds has replay but replay_files is empty");
    }
    let clock = match md.replay_clock.as_str() {
        "wall" => ReplayClock::Wall,
        "file" => ReplayClock::File,
        other => bail!("[market_data] replay_clock = {other:?}: must be \"wall\" or \"file\""),
    };
    if clock == ReplayClock::File && md.replay_loop {
        // A second pass would go back in time: its ticks would land in later bars.
        bail!("[market_data] replay_loop = true needs replay_clock = \"wall\"");
    }
    Ok(ReplaySettings {
        files: md.replay_files.iter().map(PathBuf::from).collect(),
        speed,
        venue,
        repeat: md.replay_loop,
        clock,
    })
}

/// `[market_data] feeds`, parsed: at least one, each once.
pub fn parse_feeds(names: &[String]) -> Result<Vec<FeedKind>> {
    if names.is_empty() {
        bail!("[market_data] feeds is empty: market-data would publish nothing");
    }
    let mut kinds = Vec::new();
    for name in names {
        let kind: FeedKind = name
            .parse()
            .map_err(|e: String| anyhow::anyhow!("[market_data] feeds: {e}"))?;
        if kinds.contains(&kind) {
            bail!("[market_data] feeds: {kind} is listed twice");
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

/// Built here from `[market_data]`; the type is the sim's (sim.rs), which never reads
/// the config, so the dependency points one way: config -> sim.
impl SimSettings {
    pub fn from_config(system: &SystemConfig, md: &MarketDataConfig) -> Result<Self> {
        let symbols = parse_symbols(&system.symbols)?;
        let start_prices = parse_start_prices(&md.start_prices)?;
        for key in start_prices.keys() {
            if !symbols.iter().any(|s| s.as_str() == key) {
                tracing::warn!(symbol = %key, "[market_data.start_prices] names a symbol not in [system].symbols");
            }
        }
        let default_start = PositiveMoney::new(DEFAULT_START_PRICE)?;
        let symbols = symbols
            .into_iter()
            .map(|s| {
                let start = start_prices
                    .get(s.as_str())
                    .copied()
                    .unwrap_or(default_start);
                (s, start)
            })
            .collect();
        Ok(Self {
            seed: md.seed,
            tick_interval: Duration::from_millis(md.tick_interval_ms),
            params: gbm_params(md)?,
            symbols,
        })
    }
}

fn parse_symbols(names: &[String]) -> Result<Vec<Symbol>> {
    if names.is_empty() {
        bail!("[system].symbols is empty: market-data has nothing to publish");
    }
    let mut seen = HashSet::new();
    names
        .iter()
        .map(|name| {
            let symbol: Symbol = name
                .parse()
                .with_context(|| format!("[system].symbols: {name:?} is not a valid symbol"))?;
            if !seen.insert(name.as_str()) {
                bail!("[system].symbols: {name} is listed twice");
            }
            Ok(symbol)
        })
        .collect()
}

fn parse_start_prices(raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, PositiveMoney>> {
    raw.iter()
        .map(|(key, value)| {
            let symbol: Symbol = key.to_ascii_uppercase().parse().with_context(|| {
                format!("[market_data.start_prices]: {key:?} is not a valid symbol")
            })?;
            let price: PositiveMoney = value.parse().with_context(|| {
                format!(
                    "[market_data.start_prices] {key} = {value:?}: not a positive decimal string"
                )
            })?;
            Ok((symbol.into(), price))
        })
        .collect()
}

fn gbm_params(md: &MarketDataConfig) -> Result<GbmParams> {
    let check = |ok: bool, key: &str, rule: &str, value: f64| -> Result<()> {
        if ok {
            Ok(())
        } else {
            bail!("[market_data] {key} = {value}: {rule}")
        }
    };
    if md.tick_interval_ms == 0 {
        bail!("[market_data] tick_interval_ms = 0: must be at least 1");
    }
    let v = md.volatility;
    check(
        v.is_finite() && v >= 0.0,
        "volatility",
        "must be a finite number >= 0",
        v,
    )?;
    let v = md.drift;
    check(v.is_finite(), "drift", "must be a finite number", v)?;
    let v = md.spread_bps;
    check(
        v.is_finite() && (0.0..=MAX_SPREAD_BPS).contains(&v),
        "spread_bps",
        "must be between 0 and 1000",
        v,
    )?;
    let v = md.jump_probability;
    check(
        (0.0..=1.0).contains(&v),
        "jump_probability",
        "must be between 0 and 1",
        v,
    )?;
    let v = md.jump_pct;
    check(
        (0.0..100.0).contains(&v),
        "jump_pct",
        "must be >= 0 and < 100",
        v,
    )?;
    Ok(GbmParams {
        step_ms: md.tick_interval_ms,
        volatility: md.volatility,
        drift: md.drift,
        spread_bps: md.spread_bps,
        jump_probability: md.jump_probability,
        jump_pct: md.jump_pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::config::Config;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<SimSettings> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = Config::from_parts(text, env)?;
        SimSettings::from_config(&cfg.section("system")?, &cfg.section("market_data")?)
    }

    fn error_of(text: &str, env: &[(&str, &str)]) -> String {
        format!("{:#}", load(text, env).unwrap_err())
    }

    #[test]
    fn the_project_config_is_valid() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"))
            .unwrap();
        let settings = load(&text, &[]).unwrap();
        assert_eq!(settings.symbols.len(), 3);
        assert_eq!(settings.symbols[0].0, "BTC-USD");
        assert_eq!(settings.symbols[0].1.to_string(), "97000");
        assert_eq!(settings.params.spread_bps, 2.0);
    }

    #[test]
    fn defaults_and_overrides() {
        let text = "[system]\nsymbols = [\"BTC-USD\", \"DOGE-USD\"]\n[market_data.start_prices]\nBTC-USD = \"97000\"\n";
        let settings = load(
            text,
            &[
                ("MOONBUS__MARKET_DATA__TICK_INTERVAL_MS", "20"),
                ("MOONBUS__MARKET_DATA__START_PRICES__DOGE-USD", "\"0.25\""),
            ],
        )
        .unwrap();
        assert_eq!(settings.tick_interval, Duration::from_millis(20));
        assert_eq!(settings.params.step_ms, 20);
        assert_eq!(settings.seed, 42);
        let prices: Vec<String> = settings
            .symbols
            .iter()
            .map(|(_, p)| p.to_string())
            .collect();
        assert_eq!(prices, ["97000", "0.25"]);
        let unlisted = load("[system]\nsymbols = [\"ETH-USD\"]\n", &[]).unwrap();
        assert_eq!(unlisted.symbols[0].1.get(), DEFAULT_START_PRICE);
    }

    fn settings_of(text: &str, env: &[(&str, &str)]) -> Result<Settings> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = Config::from_parts(text, env)?;
        Settings::from_config(&cfg.section("system")?, &cfg.section("market_data")?)
    }

    #[test]
    fn the_project_config_gives_full_settings() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"))
            .unwrap();
        let settings = settings_of(&text, &[]).unwrap();
        assert_eq!(settings.feeds, [FeedKind::Sim]);
        assert_eq!(settings.market.intervals.names(), "1s, 1m, 5m, 15m, 1h");
        assert_eq!(settings.market.history, 1000, "3 symbols fit the budget");
        assert_eq!(
            settings.market.default_threshold,
            Some(Threshold {
                threshold_pct: 2.0,
                window_s: 60.0
            })
        );
        assert_eq!(settings.metrics_addr.as_deref(), Some("127.0.0.1:9100"));
        assert_eq!(settings.sim_books.map(|b| b.depth), Some(10));
        assert_eq!(settings.replay.speed, Speed::Times(1.0));
        assert_eq!(settings.replay.clock, ReplayClock::Wall);
    }

    #[test]
    fn the_arb_section_reads_fees_exactly_and_checks_them() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../moonbus.toml"))
            .unwrap();
        let arb = settings_of(&text, &[]).unwrap().market.arb;
        let fee = |v: &str| arb.fee_bps(&v.parse().unwrap()).to_string();
        assert!(arb.enabled);
        assert_eq!(arb.min_net_bps, Decimal::from(5));
        assert_eq!(arb.min_interval_ns, 1_000_000_000);
        assert_eq!(
            (
                fee("hyperliquid"),
                fee("coinbase"),
                fee("aster"),
                fee("jupiter")
            ),
            ("4.5".into(), "60".into(), "4".into(), "10".into())
        );
        // Defaults without the section; an environment override as a string.
        let arb = settings_of(
            "",
            &[
                ("MOONBUS__MARKET_DATA__ARB__FEES_BPS__BINANCE", "\"7.25\""),
                ("MOONBUS__MARKET_DATA__ARB__MIN_NET_BPS", "0.1"),
            ],
        )
        .unwrap()
        .market
        .arb;
        assert_eq!(arb.fee_bps(&"binance".parse().unwrap()).to_string(), "7.25");
        assert_eq!(arb.min_net_bps.to_string(), "0.1");
        assert_eq!(arb.default_fee_bps, Decimal::from(10));
        let err = |env: &[(&str, &str)]| format!("{:#}", settings_of("", env).unwrap_err());
        assert!(
            err(&[("MOONBUS__MARKET_DATA__ARB__FEES_BPS__BINANCE", "-1")])
                .contains("fees_bps.binance = -1: must be 0 ..= 1000")
        );
        assert!(
            err(&[("MOONBUS__MARKET_DATA__ARB__DEFAULT_FEE_BPS", "1001")])
                .contains("default_fee_bps = 1001")
        );
        assert!(
            err(&[("MOONBUS__MARKET_DATA__ARB__MIN_NET_BPS", "-2")]).contains("min_net_bps = -2")
        );
        assert!(
            err(&[("MOONBUS__MARKET_DATA__ARB__FEES_BPS__BINANCE", "\"ten\"")])
                .contains("not a number of bps")
        );
        assert!(settings_of("[market_data.arb]\nfees_bps = { \"Bad Venue\" = 1 }\n", &[]).is_err());
        assert!(
            settings_of("[market_data.arb]\nmin_net = 1\n", &[]).is_err(),
            "unknown key"
        );
    }

    #[test]
    fn the_history_budget_bounds_memory_for_many_symbols() {
        let symbols: Vec<String> = (0..10_000).map(|i| format!("\"S{i}-USD\"")).collect();
        let text = format!("[system]\nsymbols = [{}]\n", symbols.join(","));
        let settings = settings_of(&text, &[]).unwrap();
        // 40 MB / (56 B x 5 intervals x 10,000 series) = 14 bars (96-byte bars in 64 MB
        // held 13).
        assert_eq!(crate::bars::KEPT_BAR_BYTES, 56, "a kept bar is packed");
        assert_eq!(settings.market.history, 14);
    }

    #[test]
    fn bad_market_data_settings_name_their_key() {
        let err = |env: &[(&str, &str)]| format!("{:#}", settings_of("", env).unwrap_err());
        assert!(
            err(&[("MOONBUS__MARKET_DATA__FEEDS", r#"["sim", "nyse"]"#)])
                .contains("unknown feed \"nyse\"")
        );
        assert!(err(&[("MOONBUS__MARKET_DATA__FEEDS", r#"["sim", "sim"]"#)])
            .contains("sim is listed twice"));
        assert!(err(&[("MOONBUS__MARKET_DATA__FEEDS", "[]")]).contains("feeds is empty"));
        assert!(err(&[("MOONBUS__MARKET_DATA__FEEDS", r#"["replay"]"#)])
            .contains("replay_files is empty"));
        assert!(
            err(&[("MOONBUS__MARKET_DATA__BAR_INTERVALS", r#"["1m", "90s"]"#)])
                .contains("not a multiple")
        );
        assert!(err(&[("MOONBUS__MARKET_DATA__ALERT_THRESHOLD_PCT", "150")])
            .contains("alert_threshold_pct = 150"));
        assert!(
            err(&[("MOONBUS__MARKET_DATA__ALERT_THRESHOLDS__BTC-USD", "0")])
                .contains("alert_thresholds.btc-usd = 0")
        );
        assert!(err(&[("MOONBUS__MARKET_DATA__REPLAY_SPEED", "-1")]).contains("replay_speed = -1"));
        assert!(err(&[("MOONBUS__MARKET_DATA__REPLAY_SPEED", "1e-10")])
            .contains("replay_speed = 0.0000000001: must be at least 0.000001"));
        assert!(err(&[("MOONBUS__MARKET_DATA__REPLAY_CLOCK", "\"event\"")])
            .contains("replay_clock = \"event\": must be \"wall\" or \"file\""));
        assert!(err(&[
            ("MOONBUS__MARKET_DATA__REPLAY_CLOCK", "\"file\""),
            ("MOONBUS__MARKET_DATA__REPLAY_LOOP", "true")
        ])
        .contains("replay_loop = true needs replay_clock = \"wall\""));
        assert!(err(&[("MOONBUS__MARKET_DATA__BOOK_INTERVAL_MS", "0")])
            .contains("book_interval_ms = 0"));
        assert!(
            err(&[("MOONBUS__MARKET_DATA__REPLAY_VENUE", "\"Bad Venue\"")])
                .contains("replay_venue")
        );
        let off = settings_of(
            "",
            &[
                ("MOONBUS__MARKET_DATA__ALERT_THRESHOLD_PCT", "0"),
                ("MOONBUS__MARKET_DATA__METRICS_ADDR", "\"\""),
            ],
        )
        .unwrap();
        assert_eq!(
            (off.market.default_threshold, off.metrics_addr),
            (None, None)
        );
    }

    #[test]
    fn bad_values_are_clear_start_up_errors() {
        let err = error_of("[system]\nsymbols = [\"BTC.USD\"]\n", &[]);
        assert!(
            err.contains("[system].symbols: \"BTC.USD\" is not a valid symbol"),
            "{err}"
        );
        let err = error_of("[system]\nsymbols = []\n", &[]);
        assert!(err.contains("[system].symbols is empty"), "{err}");
        let err = error_of("[system]\nsymbols = [\"A-B\", \"A-B\"]\n", &[]);
        assert!(err.contains("A-B is listed twice"), "{err}");
        let err = error_of("[market_data.start_prices]\nBTC-USD = \"-5\"\n", &[]);
        assert!(
            err.contains("BTC-USD = \"-5\": not a positive decimal string"),
            "{err}"
        );
        let err = error_of("[market_data]\nspread_bps = 5000.0\n", &[]);
        assert!(
            err.contains("spread_bps = 5000: must be between 0 and 1000"),
            "{err}"
        );
        let err = error_of("[market_data]\njump_pct = 100.0\n", &[]);
        assert!(err.contains("jump_pct"), "{err}");
        let err = error_of("[market_data]\ntick_interval_ms = 0\n", &[]);
        assert!(err.contains("tick_interval_ms = 0"), "{err}");
        let err = error_of("[market_data]\nvolatilty = 0.5\n", &[]);
        assert!(err.contains("unknown field `volatilty`"), "{err}");
    }
}
