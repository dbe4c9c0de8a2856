//! The `replay` feed: ticks or bars from CSV / JSON Lines files, replayed at real
//! pace, N x pace, or as fast as the engine and the bus take them, then a
//! `replay_done` status on `md.status.<venue>`.
//!
//! Files (columns by name, in any order; README "Replay files"):
//! - `.csv`: a header line, then comma-separated values (no quoting); `#` lines and
//!   blank lines are skipped. `.jsonl`: one JSON object per line, money as strings
//!   (numbers are accepted too).
//! - tick rows: `ts` (ns since the epoch), `symbol`, `price`; optional `venue`,
//!   `bid`, `ask`, `size`.
//! - bar rows (recognised by an `open` column / field): `ts` (the bar's start),
//!   `symbol`, `interval` (`1m`, ...), `open`, `high`, `low`, `close`; optional
//!   `volume`, `venue`. A bar becomes four ticks inside its interval: open at the
//!   start, then the extreme nearer the open, the other extreme, and the close at
//!   the end, with the volume on the close; the engine's bars of that interval so
//!   reproduce its open, high, low, close and volume.
//!
//! The clock (`replay_clock`):
//! - `"wall"` (the default): the file's `ts` sets the pace only; each tick is stamped
//!   with the time it is published, like a live tick (agents, risk and bars all run on
//!   the wall clock).
//! - `"file"`: each tick keeps the file's time (`FeedEvent::ReplayTick`), and the bars
//!   of the replayed series follow that time instead of the wall clock (engine.rs): a
//!   bar closes when a tick of a later interval arrives (of any replayed symbol), and
//!   every bar still open closes at the end, before `replay_done`. So the bars
//!   published are the file's bars whatever `replay_speed` (a rehearsal at full
//!   speed: services/backtest/rehearsal.py). Not with `replay_loop` (time would go back).
//!
//! Rows should be in time order; a row earlier than the one before goes out at
//! once (with the file clock it lands in its symbol's open or next bar, never in a
//! closed one). A bad row is logged and skipped; a missing file ends the replay with
//! a `disconnected` status.
//!
//! The replay runs on its own thread (file reads and pacing sleeps never occupy
//! the async runtime) and hands events to the engine with `blocking_send`: when
//! the queue is full it waits, which is how "as fast as the bus takes them" works.
//! Ticks go in batches (`FeedEvent::Ticks`, up to `TICK_BATCH`, sent when full, before
//! every pacing sleep and before every read of the file that may wait, so no tick waits
//! for a batch to fill), each naming
//! its (venue, symbol) by the number it got on first sight: no strings per tick, and
//! the engine finds the tick's slot by index. `BUFFERS` batches at most are in flight.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use moonbus_common::{
    now_ns, FeedState, FeedStatus, Interval, NonNegativeMoney, PositiveMoney, Symbol,
    ValidationError, Venue,
};
use rust_decimal::Decimal;

use crate::encode::TickData;
use crate::feed::{FeedEvent, FeedSink, SeriesId, TickBatch, TICK_BATCH};
use crate::fnv::FnvBuild;

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// 1.0 = the pace of the file's timestamps, 10.0 = ten times faster.
    Times(f64),
    AsFastAsPossible,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySettings {
    pub files: Vec<PathBuf>,
    pub speed: Speed,
    /// The venue of rows without a `venue` column.
    pub venue: Venue,
    /// Start again at the end (no `replay_done` then).
    pub repeat: bool,
    pub clock: ReplayClock,
}

/// What a replayed tick is stamped with (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayClock {
    /// The time it is published.
    Wall,
    /// The file's `ts`; the replayed series' bars follow it.
    File,
}

/// Tick buffers of the replay: batches in flight to the engine at most.
const BUFFERS: usize = 8;

/// One row: a tick, or the four ticks of a bar, at source time `ts`, of the
/// (venue, symbol) numbered `series` (`Interned::name`).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts: u64,
    pub series: SeriesId,
    pub prices: RowPrices,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowPrices {
    Tick {
        price: PositiveMoney,
        bid: Option<PositiveMoney>,
        ask: Option<PositiveMoney>,
        size: Option<NonNegativeMoney>,
    },
    Bar {
        len_ns: u64,
        open: PositiveMoney,
        high: PositiveMoney,
        low: PositiveMoney,
        close: PositiveMoney,
        volume: Option<NonNegativeMoney>,
    },
}

impl Row {
    /// The ticks of this row (at source time, seq still 0): one for a tick row, four for a
    /// bar. An array and a count, not a `Vec`: no allocation per row.
    fn points(&self) -> ([TickData; 4], usize) {
        let at = |ts, price, size| TickData {
            price,
            bid: None,
            ask: None,
            size,
            seq: 0,
            ts,
        };
        match &self.prices {
            RowPrices::Tick {
                price,
                bid,
                ask,
                size,
            } => {
                let tick = TickData {
                    price: *price,
                    bid: *bid,
                    ask: *ask,
                    size: *size,
                    seq: 0,
                    ts: self.ts,
                };
                ([tick; 4], 1)
            }
            RowPrices::Bar {
                len_ns,
                open,
                high,
                low,
                close,
                volume,
            } => {
                // The extreme nearer the open comes first: the shorter path.
                let (first, second) = if high.get() - open.get() <= open.get() - low.get() {
                    (*high, *low)
                } else {
                    (*low, *high)
                };
                let zero = Some(NonNegativeMoney::ZERO);
                let third = len_ns / 3;
                (
                    [
                        at(self.ts, *open, zero),
                        at(self.ts + third, first, zero),
                        at(self.ts + 2 * third, second, zero),
                        at(self.ts + len_ns - 1, *close, volume.or(zero)),
                    ],
                    4,
                )
            }
        }
    }
}

/// Starts the replay thread.
pub fn spawn(settings: ReplaySettings, sink: FeedSink) -> Result<()> {
    for file in &settings.files {
        format_of(file)?;
    }
    std::thread::Builder::new()
        .name("replay".into())
        .spawn(move || {
            if let Err(e) = run(&settings, &sink) {
                tracing::error!(error = %format!("{e:#}"), "replay stopped");
                let _ = sink.blocking_send(status(
                    &settings.venue,
                    FeedState::Disconnected,
                    format!("{e:#}"),
                    0,
                ));
            }
        })
        .context("starting the replay thread")?;
    Ok(())
}

fn status(venue: &Venue, status: FeedState, detail: String, symbols: u64) -> FeedEvent {
    FeedEvent::Status(FeedStatus {
        venue: venue.clone(),
        status,
        detail,
        symbols,
        ts: now_ns(),
    })
}

/// Ends when the files are done (or, repeating, when the engine stops).
fn run(settings: &ReplaySettings, sink: &FeedSink) -> Result<()> {
    let mut replay = Replayer::new(settings, sink);
    let names: Vec<String> = settings
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    replay.send(status(
        &settings.venue,
        FeedState::Connected,
        format!("replaying {}", names.join(", ")),
        0,
    ))?;
    let result = replay.files();
    // The ticks read before the end (or an error) go out before any status.
    replay.flush()?;
    result?;
    let detail = format!(
        "replayed {} ticks from {} rows of {} files, {} bad rows skipped",
        replay.ticks,
        replay.rows,
        settings.files.len(),
        replay.bad_rows
    );
    tracing::info!("{detail}");
    let symbols = replay.symbols.len() as u64;
    replay.send(status(
        &settings.venue,
        FeedState::ReplayDone,
        detail,
        symbols,
    ))
}

/// The engine has stopped (the queue is closed): the replay ends quietly.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the engine stopped")
    }
}

struct Replayer<'a> {
    settings: &'a ReplaySettings,
    sink: &'a FeedSink,
    /// The source time and wall time the pace is measured from (per file pass).
    origin: Option<(u64, Instant)>,
    /// The last seq per series (`Row::series`); 0: none sent yet.
    seqs: Vec<u64>,
    symbols: HashSet<Symbol, FnvBuild>,
    interned: Interned,
    /// The batch being filled, and the tick buffers the engine gave back.
    batch: TickBatch,
    returned: std::sync::mpsc::Receiver<Vec<(SeriesId, TickData)>>,
    home: std::sync::mpsc::Sender<Vec<(SeriesId, TickData)>>,
    /// Tick buffers made so far (at most `BUFFERS`).
    buffers: usize,
    rows: u64,
    ticks: u64,
    bad_rows: u64,
}

impl<'a> Replayer<'a> {
    fn new(settings: &'a ReplaySettings, sink: &'a FeedSink) -> Self {
        let (home, returned) = std::sync::mpsc::channel();
        let file_clock = settings.clock == ReplayClock::File;
        let ticks = Vec::with_capacity(TICK_BATCH);
        Self {
            settings,
            sink,
            origin: None,
            seqs: Vec::new(),
            symbols: HashSet::default(),
            interned: Interned::new(settings.venue.clone()),
            batch: TickBatch::new(TickBatch::feed_number(), file_clock, ticks, home.clone()),
            returned,
            home,
            buffers: 1,
            rows: 0,
            ticks: 0,
            bad_rows: 0,
        }
    }

    fn send(&self, event: FeedEvent) -> Result<()> {
        self.sink
            .blocking_send(event)
            .map_err(|_| anyhow::anyhow!(Stopped))
    }

    /// Sends the batch being filled (if any), and starts the next one in a returned
    /// buffer, or a new one while fewer than `BUFFERS` exist, else waits for one.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let ticks = match self.returned.try_recv() {
            Ok(ticks) => ticks,
            Err(_) if self.buffers < BUFFERS => {
                self.buffers += 1;
                Vec::with_capacity(TICK_BATCH)
            }
            // Every buffer is in a batch the engine holds (or in the queue): it comes back
            // when the engine drops that batch, or when the queue is dropped.
            Err(_) => self.returned.recv().map_err(|_| anyhow::anyhow!(Stopped))?,
        };
        let next = TickBatch::new(
            self.batch.feed,
            self.batch.file_clock,
            ticks,
            self.home.clone(),
        );
        let full = std::mem::replace(&mut self.batch, next);
        self.send(FeedEvent::Ticks(full))
    }

    /// Every file once, or over and over with `repeat`.
    fn files(&mut self) -> Result<()> {
        loop {
            for file in &self.settings.files {
                self.file(file)?;
            }
            if !self.settings.repeat {
                return Ok(());
            }
        }
    }

    fn file(&mut self, path: &Path) -> Result<()> {
        let format = format_of(path)?;
        let file = File::open(path).with_context(|| format!("replay file {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut header: Option<Header> = None;
        self.origin = None;
        // For a line not whole in the reader's buffer: one for the whole file.
        let mut buffer = String::new();
        let reading = || format!("reading {}", path.display());
        for number in 1.. {
            // A whole line in the buffer is read where it is (no copy, one search).
            if let Some(end) = memchr::memchr(b'\n', reader.buffer()) {
                let bytes = &reader.buffer()[..end];
                let line = std::str::from_utf8(bytes).with_context(|| {
                    format!("reading {}: line {number} is not UTF-8", path.display())
                })?;
                self.line(path, number, format, &mut header, line)?;
                reader.consume(end + 1);
                continue;
            }
            // The next line is not whole yet: reading may wait (a pipe fed as the system
            // answers, services/backtest/rehearsal.py), so the ticks read so far go first.
            self.flush()?;
            buffer.clear();
            if reader.read_line(&mut buffer).with_context(reading)? == 0 {
                break;
            }
            self.line(path, number, format, &mut header, &buffer)?;
        }
        Ok(())
    }

    /// One line of the file (the first CSV one is its header): a row, or skipped with a
    /// warning saying why. An error is the replay's end (the engine is gone).
    fn line(
        &mut self,
        path: &Path,
        number: u64,
        format: Format,
        header: &mut Option<Header>,
        line: &str,
    ) -> Result<()> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let row = match format {
            Format::Csv => match header {
                None => {
                    *header = Some(Header::new(line));
                    return Ok(());
                }
                Some(header) => parse_csv(header, line, &mut self.interned),
            },
            Format::Jsonl => parse_json(line, &mut self.interned),
        };
        match row {
            Ok(row) => self.row(row),
            Err(e) => {
                self.bad_rows += 1;
                tracing::warn!(file = %path.display(), line = number, error = %format!("{e:#}"), "bad replay row skipped");
                Ok(())
            }
        }
    }

    /// The row's ticks into the batch; the first good row of a series also
    /// introduces it (its number, venue and symbol) to the engine.
    fn row(&mut self, row: Row) -> Result<()> {
        self.rows += 1;
        let (points, count) = row.points();
        let series = row.series as usize;
        if self.seqs.len() <= series {
            self.seqs.resize(series + 1, 0);
        }
        if self.seqs[series] == 0 {
            let (venue, symbol) = self.interned.name(row.series);
            self.symbols.insert(symbol.clone());
            self.batch
                .series
                .push((row.series, venue.clone(), symbol.clone()));
        }
        for point in &points[..count] {
            self.tick(row.series, point)?;
        }
        Ok(())
    }

    fn tick(&mut self, series: SeriesId, point: &TickData) -> Result<()> {
        self.wait_until(point.ts)?;
        let seq = &mut self.seqs[series as usize];
        *seq += 1;
        let mut tick = TickData {
            seq: *seq,
            ..*point
        };
        if self.settings.clock == ReplayClock::Wall {
            tick.ts = now_ns();
        }
        self.batch.ticks.push((series, tick));
        self.ticks += 1;
        if self.batch.ticks.len() >= TICK_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Sleeps until source time `ts` is due at the replay's speed, after sending
    /// the ticks due before it.
    fn wait_until(&mut self, ts: u64) -> Result<()> {
        let Speed::Times(speed) = self.settings.speed else {
            return Ok(());
        };
        let (ts0, t0) = *self.origin.get_or_insert((ts, Instant::now()));
        let offset = Duration::from_secs_f64(ts.saturating_sub(ts0) as f64 / 1e9 / speed);
        let due = t0 + offset;
        if due > Instant::now() {
            self.flush()?;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Jsonl,
}

fn format_of(path: &Path) -> Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => Ok(Format::Csv),
        Some("jsonl") => Ok(Format::Jsonl),
        _ => bail!(
            "replay file {}: the name must end in .csv or .jsonl",
            path.display()
        ),
    }
}

/// The fields a row is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ts,
    Venue,
    Symbol,
    Price,
    Bid,
    Ask,
    Size,
    Interval,
    Open,
    High,
    Low,
    Close,
    Volume,
}

impl Field {
    const ALL: [Field; 13] = [
        Field::Ts,
        Field::Venue,
        Field::Symbol,
        Field::Price,
        Field::Bid,
        Field::Ask,
        Field::Size,
        Field::Interval,
        Field::Open,
        Field::High,
        Field::Low,
        Field::Close,
        Field::Volume,
    ];

    /// Its column name / JSON key.
    fn name(self) -> &'static str {
        match self {
            Field::Ts => "ts",
            Field::Venue => "venue",
            Field::Symbol => "symbol",
            Field::Price => "price",
            Field::Bid => "bid",
            Field::Ask => "ask",
            Field::Size => "size",
            Field::Interval => "interval",
            Field::Open => "open",
            Field::High => "high",
            Field::Low => "low",
            Field::Close => "close",
            Field::Volume => "volume",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A CSV file's header: how many columns, and which one holds each field (found once
/// per file, not by name in every row; the first of a name repeated wins). Names are
/// trimmed and compared without case; other columns are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    columns: usize,
    at: [Option<usize>; Field::ALL.len()],
}

impl Header {
    pub fn new(line: &str) -> Self {
        let names: Vec<String> = line
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        let at = Field::ALL.map(|field| names.iter().position(|n| n == field.name()));
        Self {
            columns: names.len(),
            at,
        }
    }
}

/// A row as text fields (borrowed where the text is there already).
trait Fields {
    fn get(&self, field: Field) -> Option<Cow<'_, str>>;

    fn required(&self, field: Field) -> Result<Cow<'_, str>> {
        self.get(field).with_context(|| format!("no {field}"))
    }
}

struct CsvRow<'a> {
    header: &'a Header,
    values: &'a [&'a str],
}

impl Fields for CsvRow<'_> {
    fn get(&self, field: Field) -> Option<Cow<'_, str>> {
        let i = self.header.at[field as usize]?;
        self.values
            .get(i)
            .map(|v| trim(v))
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed)
    }
}

/// `text.trim()`, with the usual case (no space at either end: a printable ASCII
/// character at both) found by two byte checks instead of decoding characters from
/// both ends (~10 % of the replay thread's instructions).
fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

impl Fields for serde_json::Map<String, serde_json::Value> {
    fn get(&self, field: Field) -> Option<Cow<'_, str>> {
        match serde_json::Map::get(self, field.name())? {
            serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
            serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }
}

/// The (venue, symbol) series seen so far, numbered from 0 in order of first
/// sight: a known one is found with one lookup of its text, not parsed and
/// validated again.
pub struct Interned {
    /// The venue of rows without one.
    default_venue: Venue,
    /// "venue symbol" -> number.
    numbers: HashMap<String, SeriesId, FnvBuild>,
    names: Vec<(Venue, Symbol)>,
    /// The key being looked up (no allocation per row).
    key: String,
    /// For each series, the series of the row that came after its latest row (`NO_SERIES`:
    /// none yet), and the series of the latest row: the guess for the next row.
    after: Vec<SeriesId>,
    latest: Option<SeriesId>,
}

const NO_SERIES: SeriesId = SeriesId::MAX;

impl Interned {
    pub fn new(default_venue: Venue) -> Self {
        Self {
            default_venue,
            numbers: HashMap::default(),
            names: Vec::new(),
            key: String::new(),
            after: Vec::new(),
            latest: None,
        }
    }

    /// The number of (`venue`, or the default venue, `symbol`). Files often go round their
    /// symbols in the same order (every symbol's bar at each time), so the series that
    /// followed the latest one last time is tried first: two string compares instead of a
    /// hash lookup that misses the cache at 10,000 series. A wrong guess costs the compare.
    fn series(&mut self, venue: Option<&str>, symbol: &str) -> Result<SeriesId> {
        let guess = self.latest.map_or(NO_SERIES, |l| self.after[l as usize]);
        let number = match self.names.get(guess as usize) {
            Some((v, s))
                if s.as_str() == symbol
                    && v.as_str() == venue.unwrap_or(self.default_venue.as_str()) =>
            {
                guess
            }
            _ => self.lookup(venue, symbol)?,
        };
        if let Some(latest) = self.latest {
            self.after[latest as usize] = number;
        }
        self.latest = Some(number);
        Ok(number)
    }

    fn lookup(&mut self, venue: Option<&str>, symbol: &str) -> Result<SeriesId> {
        self.key.clear();
        self.key
            .push_str(venue.unwrap_or(self.default_venue.as_str()));
        self.key.push(' ');
        self.key.push_str(symbol);
        if let Some(&number) = self.numbers.get(self.key.as_str()) {
            return Ok(number);
        }
        let symbol: Symbol = symbol.parse().context("symbol")?;
        let venue: Venue = match venue {
            Some(text) => text.parse().context("venue")?,
            None => self.default_venue.clone(),
        };
        let number = SeriesId::try_from(self.names.len()).context("too many series")?;
        self.names.push((venue, symbol));
        self.after.push(NO_SERIES);
        self.numbers.insert(self.key.clone(), number);
        Ok(number)
    }

    /// The venue and symbol of series `number` (one this `Interned` gave out).
    pub fn name(&self, number: SeriesId) -> (&Venue, &Symbol) {
        let (venue, symbol) = &self.names[number as usize];
        (venue, symbol)
    }
}

/// Rows of up to this many columns are split on the stack (no allocation per row).
const STACK_COLUMNS: usize = 16;

pub fn parse_csv(header: &Header, line: &str, interned: &mut Interned) -> Result<Row> {
    // One pass splits and counts.
    let mut values = [""; STACK_COLUMNS];
    let mut count = 0;
    for value in line.split(',') {
        if let Some(slot) = values.get_mut(count) {
            *slot = value;
        }
        count += 1;
    }
    if count != header.columns {
        bail!("{count} values for {} columns", header.columns);
    }
    if count <= STACK_COLUMNS {
        let values = &values[..count];
        parse_row(&CsvRow { header, values }, interned)
    } else {
        let values: Vec<&str> = line.split(',').collect();
        parse_row(
            &CsvRow {
                header,
                values: &values,
            },
            interned,
        )
    }
}

pub fn parse_json(line: &str, interned: &mut Interned) -> Result<Row> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).context("not a JSON object")?;
    parse_row(&object, interned)
}

/// `text.parse::<u64>()`, with 1 to 19 plain digits (no overflow possible) read without
/// a check per digit: the timestamp was the dearest field of a row.
fn parse_ts(text: &str) -> Result<u64, std::num::ParseIntError> {
    let digits = text.as_bytes();
    if (1..=19).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) {
        return Ok(digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    text.parse()
}

/// The money value of `name`, if the row has one, of the kind `new` makes (`bound` says
/// its rule). A value in the wire's form (what moonbus and the venues write) is read by the
/// contract's one-pass parser (money.rs, ~1/3 of rust_decimal's instructions); any other (a
/// `+`, leading zeros, ...) by rust_decimal, with its reason when it is no decimal.
fn money<T: FromStr>(
    fields: &impl Fields,
    name: Field,
    new: fn(Decimal) -> Result<T, ValidationError>,
    bound: &str,
) -> Result<Option<T>> {
    let Some(v) = fields.get(name) else {
        return Ok(None);
    };
    if let Ok(m) = v.parse::<T>() {
        return Ok(Some(m));
    }
    let value: Decimal = v
        .parse()
        .with_context(|| format!("{name}: {v:?} is not a decimal"))?;
    new(value)
        .with_context(|| format!("{name} must be {bound}"))
        .map(Some)
}

fn parse_row(fields: &impl Fields, interned: &mut Interned) -> Result<Row> {
    let ts = parse_ts(&fields.required(Field::Ts)?).context("ts: not an integer of nanoseconds")?;
    let series = interned.series(
        fields.get(Field::Venue).as_deref(),
        &fields.required(Field::Symbol)?,
    )?;
    let positive = |name| money(fields, name, PositiveMoney::new, "> 0");
    let non_negative = |name| money(fields, name, NonNegativeMoney::new, ">= 0");
    let required = |name: Field| positive(name)?.with_context(|| format!("no {name}"));
    let prices = if fields.get(Field::Open).is_some() {
        let interval: Interval = fields
            .required(Field::Interval)?
            .parse()
            .context("interval")?;
        let len_ns = interval.seconds().saturating_mul(1_000_000_000);
        if len_ns == 0 {
            bail!("interval {interval} has no length");
        }
        // The bar's ticks fall within ts .. ts + len_ns (`points`): that must fit a u64.
        if ts.checked_add(len_ns).is_none() {
            bail!("ts {ts} + interval {interval} is past the end of u64 nanoseconds");
        }
        let (open, high, low, close) = (
            required(Field::Open)?,
            required(Field::High)?,
            required(Field::Low)?,
            required(Field::Close)?,
        );
        if high < open.max(close).max(low) || low > open.min(close) {
            bail!("high {high} / low {low} do not contain open {open} and close {close}");
        }
        RowPrices::Bar {
            len_ns,
            open,
            high,
            low,
            close,
            volume: non_negative(Field::Volume)?,
        }
    } else {
        RowPrices::Tick {
            price: required(Field::Price)?,
            bid: positive(Field::Bid)?,
            ask: positive(Field::Ask)?,
            size: non_negative(Field::Size)?,
        }
    };
    Ok(Row { ts, series, prices })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(header: &str) -> Header {
        Header::new(header)
    }

    fn interned() -> Interned {
        Interned::new("replay".parse().unwrap())
    }

    #[test]
    fn csv_and_json_ticks_read_the_same() {
        let csv = parse_csv(
            &columns("ts,symbol,price,bid,ask,size"),
            "1000,BTC-USD,97000.5,97000,97001,0.25",
            &mut interned(),
        )
        .unwrap();
        let json = parse_json(r#"{"ts":1000,"symbol":"BTC-USD","price":"97000.5","bid":"97000","ask":97001,"size":"0.25"}"#, &mut interned()).unwrap();
        assert_eq!(csv, json);
        assert_eq!(csv.points().1, 1);
        // Without a venue: the replay's own; the same (venue, symbol) keeps its number.
        let mut seen = interned();
        let no_optional = parse_csv(
            &columns("symbol,ts,price,venue"),
            "ETH-USD,5,3500,",
            &mut seen,
        )
        .unwrap();
        let named = parse_csv(
            &columns("symbol,ts,price,venue"),
            "ETH-USD,6,3501,replay",
            &mut seen,
        )
        .unwrap();
        let other = parse_csv(
            &columns("symbol,ts,price,venue"),
            "ETH-USD,7,3502,binance",
            &mut seen,
        )
        .unwrap();
        assert_eq!((no_optional.series, named.series, other.series), (0, 0, 1));
        assert_eq!(seen.name(0).0.as_str(), "replay");
        assert_eq!(seen.name(1).0.as_str(), "binance");
        assert_eq!(seen.name(1).1.as_str(), "ETH-USD");
        assert!(matches!(
            no_optional.prices,
            RowPrices::Tick {
                bid: None,
                size: None,
                ..
            }
        ));
    }

    #[test]
    fn header_names_are_found_once_whatever_their_case_spaces_and_neighbours() {
        let header = columns(" TS ,note, Symbol,PRICE,price");
        let row = parse_csv(&header, "7,hello,BTC-USD,5,6", &mut interned()).unwrap();
        assert_eq!(row.ts, 7);
        // The first `price` column counts; `note` is not a field.
        assert!(matches!(row.prices, RowPrices::Tick { price, .. } if price.to_string() == "5"));
        assert!(format!(
            "{:#}",
            parse_csv(&header, "7,hello,BTC-USD,5", &mut interned()).unwrap_err()
        )
        .contains("4 values for 5 columns"));
    }

    #[test]
    fn series_numbers_are_by_first_sight_whatever_order_the_rows_come_in() {
        // Round and round in one order (the guess holds), then out of order, a venue of its
        // own for the same symbol, and a bad symbol in between (the guess misses).
        let names = [
            (None, "A-USD"),
            (None, "B-USD"),
            (None, "C-USD"),
            (None, "A-USD"),
            (None, "B-USD"),
            (None, "C-USD"),
            (None, "A-USD"),
            (None, "C-USD"),
            (Some("binance"), "C-USD"),
            (None, "B-USD"),
            (Some("replay"), "C-USD"),
            (None, "D-USD"),
            (None, "A-USD"),
            (None, "D-USD"),
            (Some("binance"), "A-USD"),
            (None, "A-USD"),
        ];
        let mut seen = interned();
        let mut first_sight: Vec<(String, String)> = Vec::new();
        for (venue, symbol) in names {
            let key = (venue.unwrap_or("replay").to_string(), symbol.to_string());
            let expected = match first_sight.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    first_sight.push(key);
                    first_sight.len() - 1
                }
            };
            assert_eq!(seen.series(venue, symbol).unwrap() as usize, expected);
            assert!(seen.series(None, "bad").is_err());
            assert_eq!(seen.series(venue, symbol).unwrap() as usize, expected);
        }
        assert_eq!(seen.name(3).0.as_str(), "binance");
        assert_eq!(seen.name(3).1.as_str(), "C-USD");
    }

    #[test]
    fn timestamps_read_as_str_parse_reads_them() {
        for text in [
            "0",
            "7",
            "1764129600001000000",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "+5",
            "",
            "-1",
            "1e9",
            " 1",
            "00000000000000000001",
        ] {
            assert_eq!(parse_ts(text).ok(), text.parse::<u64>().ok(), "{text:?}");
        }
    }

    #[test]
    fn a_bar_becomes_four_ticks_inside_its_interval() {
        let mut seen = interned();
        let row = parse_csv(
            &columns("ts,symbol,interval,open,high,low,close,volume,venue"),
            "60000000000,SOL-USDC,1m,150,151,149.5,150.5,12.5,binance",
            &mut seen,
        )
        .unwrap();
        assert_eq!(seen.name(row.series).0.as_str(), "binance");
        let (points, count) = row.points();
        assert_eq!(count, 4);
        let points: Vec<(u64, String, String)> = points
            .into_iter()
            .map(|t| {
                (
                    t.ts,
                    t.price.to_string(),
                    t.size.map(|s| s.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let s = 1_000_000_000;
        assert_eq!(
            points,
            [
                (60 * s, "150".into(), "0".into()),
                (80 * s, "149.5".into(), "0".into()),
                (100 * s, "151".into(), "0".into()),
                (120 * s - 1, "150.5".into(), "12.5".into()),
            ]
        );
    }

    /// A bar whose interval ends past u64 nanoseconds is a bad row: its ticks' times
    /// (`ts + len_ns`) would overflow (a panic in debug builds, ticks wrapped back to
    /// 1970 in release).
    #[test]
    fn a_bar_ending_past_u64_time_is_a_bad_row() {
        let header = columns("ts,symbol,interval,open,high,low,close");
        let line = "18446744073709551000,SOL-USDC,1m,150,151,149.5,150.5";
        match parse_csv(&header, line, &mut interned()) {
            Err(e) => assert!(format!("{e:#}").contains("past the end of u64"), "{e:#}"),
            Ok(row) => panic!("accepted, its ticks: {:?}", row.points()),
        }
    }

    #[test]
    fn the_shipped_sample_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/replay_sample.csv"
        ))
        .unwrap();
        let mut lines = text.lines().filter(|l| !l.starts_with('#'));
        let header = columns(lines.next().unwrap());
        let mut interned = interned();
        let rows: Vec<Row> = lines
            .map(|l| parse_csv(&header, l, &mut interned).unwrap())
            .collect();
        assert_eq!(rows.len(), 720);
        assert!(rows.windows(2).all(|w| w[0].ts < w[1].ts), "in time order");
    }

    #[test]
    fn money_reads_as_rust_decimal_reads_it_in_any_form_it_takes() {
        // The wire form goes through the contract's parser, anything else through
        // rust_decimal as before: the same value and scale either way.
        let cols = "ts,symbol,price,bid,ask,size";
        for text in [
            "100.13",
            "0.00001234",
            "97000.01000000",
            "5",
            "0",
            "+100.5",
            "0100.5",
            "1_000.5",
            "12345678901234.5",
            "0.1234567890123456789012345",
            "1e5",
        ] {
            let expected = text.parse::<Decimal>().unwrap();
            let line = format!("1,BTC-USD,{text},{text},{text},{text}");
            let row = parse_csv(&columns(cols), &line, &mut interned());
            if expected <= Decimal::ZERO {
                let e = format!("{:#}", row.unwrap_err());
                assert!(e.contains("price must be > 0"), "{text}: {e}");
                continue;
            }
            let RowPrices::Tick {
                price,
                bid,
                ask,
                size,
            } = row.unwrap().prices
            else {
                panic!("{text}: not a tick");
            };
            for got in [
                price.get(),
                bid.unwrap().get(),
                ask.unwrap().get(),
                size.unwrap().get(),
            ] {
                assert_eq!(got, expected, "{text}");
                assert_eq!(got.scale(), expected.scale(), "{text}");
            }
        }
        let size = |text: &str| {
            let line = format!("1,BTC-USD,1,{text}");
            parse_csv(&columns("ts,symbol,price,size"), &line, &mut interned())
                .map(|row| match row.prices {
                    RowPrices::Tick { size, .. } => size.unwrap().get(),
                    RowPrices::Bar { .. } => unreachable!(),
                })
                .map_err(|e| format!("{e:#}"))
        };
        assert_eq!(size("0"), Ok(Decimal::ZERO));
        assert!(size("-0.5").unwrap_err().contains("size must be >= 0"));
        assert!(size("1.2.3")
            .unwrap_err()
            .contains("size: \"1.2.3\" is not a decimal"));
        assert!(size("100000000000000")
            .unwrap_err()
            .contains("size must be >= 0"));
    }

    #[test]
    fn values_are_trimmed_as_str_trim_trims_them() {
        for text in [
            "a",
            "ab",
            " a",
            "a ",
            "\ta\t",
            "\u{a0}a",
            "a\u{2003}",
            " ",
            "",
            "é",
            " é ",
            "a b",
        ] {
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
        let row = parse_csv(
            &columns("ts,symbol,price"),
            " 1 ,\u{a0}BTC-USD\u{2003}, 5 ",
            &mut interned(),
        )
        .unwrap();
        assert_eq!(row.ts, 1);
        assert!(
            matches!(row.prices, RowPrices::Tick { price, .. } if price.get() == Decimal::from(5))
        );
    }

    /// The replay thread over `text` as a file: its ticks (series, price) in order, and
    /// the detail of its last status.
    fn replay_text(name: &str, text: &[u8]) -> (Vec<(String, Decimal, u64)>, String) {
        let path =
            std::env::temp_dir().join(format!("moonbus-replay-{}-{name}.csv", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let (sink, mut events) = crate::feed::channel();
        let settings = ReplaySettings {
            files: vec![path.clone()],
            speed: Speed::AsFastAsPossible,
            venue: "sim".parse().unwrap(),
            repeat: false,
            clock: ReplayClock::File,
        };
        spawn(settings, sink).unwrap();
        let (mut names, mut ticks, mut detail) = (HashMap::new(), Vec::new(), String::new());
        while let Some(event) = events.blocking_recv() {
            match event {
                FeedEvent::Ticks(batch) => {
                    for (n, _, symbol) in &batch.series {
                        names.insert(*n, symbol.to_string());
                    }
                    for (n, tick) in &batch.ticks {
                        ticks.push((names[n].clone(), tick.price.get(), tick.seq));
                    }
                }
                FeedEvent::Status(status) => detail = status.detail,
                _ => {}
            }
        }
        std::fs::remove_file(&path).unwrap();
        (ticks, detail)
    }

    #[test]
    fn a_file_is_read_whole_lines_across_the_read_buffer_comments_crlf_and_bad_rows() {
        // ~100 KiB: lines straddle the 64 KiB read buffer, and the last has no newline.
        let mut text = String::from("# a comment\r\nts,symbol,price\r\n\n");
        let mut expected = Vec::new();
        for i in 0..6000u64 {
            let symbol = ["AAA-USD", "BBBBBBBBBBBBBBBBBBBB-USD"][(i % 2) as usize];
            if i == 1234 {
                text.push_str(&format!("{i},{symbol},-1\n")); // bad: skipped, the rest goes on
                continue;
            }
            let price = Decimal::new(100_000 + i as i64, 3);
            text.push_str(&format!(
                "{i},{symbol},{price}{}",
                if i % 3 == 0 { "\r\n" } else { "\n" }
            ));
            expected.push((symbol.to_string(), price));
        }
        text.push_str("6000,AAA-USD,7.5");
        expected.push(("AAA-USD".into(), Decimal::new(75, 1)));
        assert!(text.len() > 90_000);
        let (ticks, detail) = replay_text("whole", text.as_bytes());
        let got: Vec<(String, Decimal)> = ticks.iter().map(|(s, p, _)| (s.clone(), *p)).collect();
        assert_eq!(got, expected);
        let seqs: Vec<u64> = ticks
            .iter()
            .filter(|t| t.0 == "AAA-USD")
            .map(|t| t.2)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert!(
            detail.contains("6000 rows of 1 files, 1 bad rows skipped"),
            "{detail}"
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_ends_the_replay_saying_where() {
        // A whole line (read in the buffer), then a last one without a newline (read_line).
        let (whole, last) = (&[0xff, 0xfe, b'\n', b'3'][..], &[0xff][..]);
        for (name, tail, says) in [
            ("utf8-whole", whole, "line 3 is not UTF-8"),
            ("utf8-last", last, "stream did not contain valid UTF-8"),
        ] {
            let mut text = b"ts,symbol,price\n1,AAA-USD,1\n2,AAA-USD,".to_vec();
            text.extend_from_slice(tail);
            let (ticks, detail) = replay_text(name, &text);
            assert_eq!(ticks.len(), 1, "the row before is replayed");
            assert!(
                detail.contains("reading ") && detail.contains(says),
                "{detail}"
            );
        }
    }

    #[test]
    fn bad_rows_say_what_is_wrong() {
        let err = |cols: &str, line: &str| {
            format!(
                "{:#}",
                parse_csv(&columns(cols), line, &mut interned()).unwrap_err()
            )
        };
        assert!(err("ts,symbol,price", "x,BTC-USD,1").contains("ts: not an integer"));
        assert!(err("ts,symbol,price", "1,btc,1").contains("symbol"));
        assert!(err("ts,symbol,price,venue", "1,BTC-USD,1,Bad Venue").contains("venue"));
        assert!(err("ts,symbol,price", "1,BTC-USD,-1").contains("price must be > 0"));
        assert!(err("ts,symbol,price", "1,BTC-USD").contains("2 values for 3 columns"));
        assert!(err("ts,symbol", "1,BTC-USD").contains("no price"));
        assert!(err(
            "ts,symbol,interval,open,high,low,close",
            "1,A-B,1m,10,9,8,9"
        )
        .contains("do not contain"));
        assert!(
            format!("{:#}", parse_json("[1]", &mut interned()).unwrap_err())
                .contains("not a JSON object")
        );
        assert!(format_of(Path::new("x.txt")).is_err());
    }
}
