//! Where ticks come from. `Feed` is the seam for the venues: today the simulated
//! feed only; live exchange connectors become more variants with the same three
//! methods, and the engine does not change.

use moonbus_common::{now_ns, NonNegativeMoney, PositiveMoney, Symbol, Tick, Venue};
use tokio::time::{interval, Interval, MissedTickBehavior};

use crate::config::SimSettings;
use crate::sim::GbmPath;

pub enum Feed {
    Sim(SimFeed),
}

impl Feed {
    pub fn venue(&self) -> &Venue {
        match self {
            Feed::Sim(sim) => &sim.venue,
        }
    }

    /// The symbols this feed publishes; a tick's index refers to this list.
    pub fn symbols(&self) -> &[Symbol] {
        match self {
            Feed::Sim(sim) => &sim.symbols,
        }
    }

    /// Waits for the next tick and the index of its symbol in `symbols()`.
    /// Cancel-safe: nothing changes before the last await, so it can sit in a `select!`.
    pub async fn next_tick(&mut self) -> (usize, Tick) {
        match self {
            Feed::Sim(sim) => sim.next_tick().await,
        }
    }
}

/// Venue `sim`: each symbol ticks every `tick_interval`, the symbols in turn (one
/// clock at interval / n, round robin) so the load is spread evenly.
pub struct SimFeed {
    venue: Venue,
    symbols: Vec<Symbol>,
    paths: Vec<GbmPath>,
    /// The last seq published per symbol; the first tick is seq 1.
    seqs: Vec<u64>,
    clock: Interval,
    next: usize,
}

impl SimFeed {
    /// Must run inside the tokio runtime (it starts the clock).
    pub fn new(settings: &SimSettings) -> Self {
        let symbols: Vec<Symbol> = settings.symbols.iter().map(|(s, _)| s.clone()).collect();
        let paths = settings
            .symbols
            .iter()
            .map(|(symbol, start)| {
                GbmPath::new(
                    settings.seed,
                    symbol.as_str(),
                    start.get(),
                    &settings.params,
                )
            })
            .collect();
        let count = u32::try_from(symbols.len()).unwrap_or(u32::MAX).max(1);
        let mut clock = interval(settings.tick_interval / count);
        // Burst keeps the configured rate even when interval / n is below the
        // timer's 1 ms resolution (several ticks per wake-up).
        clock.set_missed_tick_behavior(MissedTickBehavior::Burst);
        Self {
            venue: Venue::sim(),
            seqs: vec![0; symbols.len()],
            symbols,
            paths,
            clock,
            next: 0,
        }
    }

    async fn next_tick(&mut self) -> (usize, Tick) {
        if self.symbols.is_empty() {
            // Config refuses an empty symbol list; without symbols there is never a tick.
            return std::future::pending().await;
        }
        loop {
            self.clock.tick().await;
            let index = self.next;
            self.next = (index + 1) % self.symbols.len();
            let quote = self.paths[index].next_quote();
            // The model keeps prices > 0 (sim.rs); a refused price would be a bug
            // there, so it is logged and that step skipped rather than published.
            let Ok(price) = PositiveMoney::new(quote.price) else {
                tracing::error!(symbol = %self.symbols[index], price = %quote.price, "simulated price refused");
                continue;
            };
            self.seqs[index] += 1;
            let tick = Tick {
                venue: self.venue.clone(),
                symbol: self.symbols[index].clone(),
                price,
                bid: PositiveMoney::new(quote.bid).ok(),
                ask: PositiveMoney::new(quote.ask).ok(),
                size: NonNegativeMoney::new(quote.size).ok(),
                seq: self.seqs[index],
                ts: now_ns(),
            };
            return (index, tick);
        }
    }
}
