//! The JSON of ticks, books and bars, written by hand: 10,000 symbols publish
//! hundreds of thousands of these a second, and this is several times faster than
//! serde + `Decimal`'s `Display`. The bytes are exactly serde's (`encode(&x)`),
//! which the tests check; the rare messages (alerts, statuses) go through serde.

use bytes::{BufMut, Bytes, BytesMut};
use moonbus_common::{Bar, Book, NonNegativeMoney, PositiveMoney, PriceLevel, Symbol, Tick, Venue};
use rust_decimal::Decimal;

/// A tick without its labels: what the market keeps per (venue, symbol).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickData {
    pub price: PositiveMoney,
    pub bid: Option<PositiveMoney>,
    pub ask: Option<PositiveMoney>,
    pub size: Option<NonNegativeMoney>,
    pub seq: u64,
    pub ts: u64,
}

impl From<&Tick> for TickData {
    fn from(tick: &Tick) -> Self {
        Self {
            price: tick.price,
            bid: tick.bid,
            ask: tick.ask,
            size: tick.size,
            seq: tick.seq,
            ts: tick.ts,
        }
    }
}

/// `{"venue":"<venue>","symbol":"<symbol>","price":"`: the constant start of every
/// tick of one (venue, symbol). Venues and symbols are validated tokens
/// (`[a-z0-9_]`, `[A-Z0-9-]`): nothing to escape.
pub fn tick_prefix(venue: &Venue, symbol: &Symbol) -> Box<[u8]> {
    format!(r#"{{"venue":"{venue}","symbol":"{symbol}","price":""#)
        .into_bytes()
        .into_boxed_slice()
}

/// Buffer size the encoder allocates at a time; ticks are split off its front,
/// so one allocation serves hundreds of ticks.
const CHUNK: usize = 64 * 1024;

/// Writes messages into a shared buffer and hands each out as its own `Bytes`.
#[derive(Debug, Default)]
pub struct TickEncoder {
    buf: BytesMut,
}

impl TickEncoder {
    /// Room for a message of about `size` bytes (more is fine: the buffer grows).
    fn buf(&mut self, size: usize) -> &mut BytesMut {
        if self.buf.capacity() < size {
            self.buf.reserve(CHUNK.max(size));
        }
        &mut self.buf
    }

    pub fn encode(&mut self, prefix: &[u8], tick: &TickData) -> Bytes {
        // Written on the stack first, then copied into the chunk at once: the short
        // pieces of a tick (keys, digits) go as inlined moves, where `put_slice` into the
        // chunk called memcpy for each. A prefix too long for the stack buffer (none is:
        // venues and symbols are short tokens) goes into the chunk on its own.
        if prefix.len() <= 512 - TICK_REST {
            let mut staged = Staged::<512>::new();
            staged.put(prefix);
            put_tick_rest(&mut staged, tick);
            self.buf(staged.len).put_slice(staged.bytes());
        } else {
            let mut rest = Staged::<TICK_REST>::new();
            put_tick_rest(&mut rest, tick);
            let buf = self.buf(prefix.len() + rest.len);
            buf.put_slice(prefix);
            buf.put_slice(rest.bytes());
        }
        self.buf.split().freeze()
    }

    /// A book as serde writes it, under `venue` (the aggregate reuses a venue's
    /// book as `all` without copying it).
    pub fn book(&mut self, venue: &str, book: &Book) -> Bytes {
        let buf = self.buf(128 + 80 * (book.bids.len() + book.asks.len()));
        put_labels(buf, venue, &book.symbol);
        for (key, levels) in [
            (&br#","bids":["#[..], &book.bids),
            (&br#"],"asks":["#[..], &book.asks),
        ] {
            buf.put_slice(key);
            put_levels(buf, levels);
        }
        buf.put_slice(br#"],"seq":"#);
        put_u64(buf, book.seq);
        buf.put_slice(br#","ts":"#);
        put_u64(buf, book.ts);
        buf.put_u8(b'}');
        buf.split().freeze()
    }

    /// Like `book`, from parts: the levels of an aggregate.
    pub fn levels(
        &mut self,
        venue: &str,
        symbol: &Symbol,
        bids: &[PriceLevel],
        asks: &[PriceLevel],
        seq: u64,
        ts: u64,
    ) -> Bytes {
        let buf = self.buf(128 + 80 * (bids.len() + asks.len()));
        put_labels(buf, venue, symbol);
        buf.put_slice(br#","bids":["#);
        put_levels(buf, bids);
        buf.put_slice(br#"],"asks":["#);
        put_levels(buf, asks);
        buf.put_slice(br#"],"seq":"#);
        put_u64(buf, seq);
        buf.put_slice(br#","ts":"#);
        put_u64(buf, ts);
        buf.put_u8(b'}');
        buf.split().freeze()
    }

    pub fn bar(&mut self, bar: &Bar) -> Bytes {
        let buf = self.buf(512);
        put_labels(buf, bar.venue.as_str(), &bar.symbol);
        buf.put_slice(br#","interval":""#);
        buf.put_slice(bar.interval.as_str().as_bytes());
        for (key, value) in [
            (&br#"","open":""#[..], bar.open.get()),
            (br#"","high":""#, bar.high.get()),
            (br#"","low":""#, bar.low.get()),
            (br#"","close":""#, bar.close.get()),
            (br#"","volume":""#, bar.volume.get()),
        ] {
            buf.put_slice(key);
            put_decimal(buf, value);
        }
        for (key, value) in [
            (&br#"","trades":"#[..], bar.trades),
            (br#","start_ts":"#, bar.start_ts),
            (br#","end_ts":"#, bar.end_ts),
        ] {
            buf.put_slice(key);
            put_u64(buf, value);
        }
        buf.put_u8(b'}');
        buf.split().freeze()
    }
}

/// `{"venue":"<venue>","symbol":"<symbol>"` (validated tokens: nothing to escape).
fn put_labels(buf: &mut BytesMut, venue: &str, symbol: &Symbol) {
    buf.put_slice(br#"{"venue":""#);
    buf.put_slice(venue.as_bytes());
    buf.put_slice(br#"","symbol":""#);
    buf.put_slice(symbol.as_str().as_bytes());
    buf.put_u8(b'"');
}

/// `["price","size"],...`
fn put_levels(buf: &mut BytesMut, levels: &[PriceLevel]) {
    for (i, (price, size)) in levels.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(b"[\"");
        put_decimal(buf, price.get());
        buf.put_slice(b"\",\"");
        put_decimal(buf, size.get());
        buf.put_slice(b"\"]");
    }
}

/// A price as f64 for the alert arithmetic (not money): exact enough, and much
/// cheaper than `Decimal`'s own conversion.
pub fn to_f64(value: Decimal) -> f64 {
    const POW10: [f64; 29] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28,
    ];
    value.mantissa() as f64 / POW10[value.scale().min(28) as usize]
}

/// The most bytes that follow a tick's prefix: 4 x (key <= 10 + decimal) + 2 x (key <= 7
/// + u64 <= 20) + the closing brace.
const TICK_REST: usize = 4 * (10 + DECIMAL) + 2 * (7 + 20) + 1;

/// The longest decimal `Display` writes: a sign, "0." and 28 digits after the point (or
/// 29 digits and a point).
const DECIMAL: usize = 31;

/// What follows a tick's prefix: the price's digits to the closing brace.
fn put_tick_rest<const N: usize>(out: &mut Staged<N>, tick: &TickData) {
    out.decimal(tick.price.get());
    for (key, value) in [
        (&br#"","bid":""#[..], tick.bid.map(PositiveMoney::get)),
        (&br#"","ask":""#[..], tick.ask.map(PositiveMoney::get)),
        (&br#"","size":""#[..], tick.size.map(NonNegativeMoney::get)),
    ] {
        if let Some(value) = value {
            out.put(key);
            out.decimal(value);
        }
    }
    out.put(br#"","seq":"#);
    out.u64(tick.seq);
    out.put(br#","ts":"#);
    out.u64(tick.ts);
    out.put(b"}");
}

/// A decimal as `Decimal`'s `Display` writes it: the mantissa's digits with a
/// point `scale` digits from the right, a leading `0.` and zeros when needed.
pub fn put_decimal(buf: &mut BytesMut, value: Decimal) {
    let mut staged = Staged::<DECIMAL>::new();
    staged.decimal(value);
    buf.put_slice(staged.bytes());
}

fn put_u64(buf: &mut BytesMut, value: u64) {
    let mut staged = Staged::<20>::new();
    staged.u64(value);
    buf.put_slice(staged.bytes());
}

/// Bytes written on the stack, `N` at most (the callers size `N` for what they write:
/// more panics).
struct Staged<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Staged<N> {
    fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    // Inlined, so that a constant piece (a key) is copied with moves, not a memcpy call.
    #[inline(always)]
    fn put(&mut self, piece: &[u8]) {
        self.bytes[self.len..self.len + piece.len()].copy_from_slice(piece);
        self.len += piece.len();
    }

    fn u64(&mut self, value: u64) {
        self.digits(value, value.checked_ilog10().map_or(1, |l| l as usize + 1));
    }

    /// `value`'s last `width` digits, written in place (leading zeros if it has fewer).
    fn digits(&mut self, mut value: u64, width: usize) {
        let end = self.len + width;
        let out = &mut self.bytes[self.len..end];
        let mut i = width;
        // Two digits at a time from a table (the itoa trick): half the divisions.
        while i >= 2 {
            let pair = (value % 100) as usize * 2;
            value /= 100;
            i -= 2;
            out[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        }
        if i == 1 {
            out[0] = b'0' + (value % 10) as u8;
        }
        self.len = end;
    }

    fn decimal(&mut self, value: Decimal) {
        if value.is_sign_negative() && !value.is_zero() {
            self.put(b"-");
        }
        let mantissa = value.mantissa().unsigned_abs();
        let scale = value.scale() as usize;
        match u64::try_from(mantissa) {
            // Money fits here: a mantissa below 2^64 and a scale whose power of ten does.
            Ok(mantissa) if scale < POW10.len() => {
                let whole = mantissa / POW10[scale];
                self.u64(whole);
                if scale > 0 {
                    self.put(b".");
                    self.digits(mantissa % POW10[scale], scale);
                }
            }
            _ => {
                let mut digits = [0u8; 40];
                let len = write_digits(&mut digits, mantissa);
                let digits = &digits[digits.len() - len..];
                if scale == 0 {
                    self.put(digits);
                } else if len > scale {
                    let (int, frac) = digits.split_at(len - scale);
                    self.put(int);
                    self.put(b".");
                    self.put(frac);
                } else {
                    self.put(b"0.");
                    for _ in len..scale {
                        self.put(b"0");
                    }
                    self.put(digits);
                }
            }
        }
    }
}

/// 10^0 ..= 10^19, every power of ten a u64 holds.
const POW10: [u64; 20] = {
    let mut table = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Writes `n`'s decimal digits at the end of `out`; returns how many.
fn write_digits(out: &mut [u8; 40], mut n: u128) -> usize {
    let mut i = out.len();
    while n > 0 || i == out.len() {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.len() - i
}

const DIGIT_PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

#[cfg(test)]
mod tests {
    use super::*;
    use moonbus_common::bus::encode;
    use proptest::prelude::*;

    fn text(value: Decimal) -> String {
        let mut buf = BytesMut::new();
        put_decimal(&mut buf, value);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    proptest! {
        #[test]
        fn decimals_read_as_display_writes_them(
            lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(),
            negative in any::<bool>(), scale in 0u32..=28,
        ) {
            let value = Decimal::from_parts(lo, mid, hi, negative, scale);
            prop_assert_eq!(text(value), value.to_string());
        }

        #[test]
        fn ticks_are_byte_for_byte_serdes(
            price in 1i64..i64::MAX, price_scale in 0u32..=18,
            optional in any::<(bool, bool, bool)>(), seq in any::<u64>(), ts in any::<u64>(),
        ) {
            // Only money the contract admits (below 1e14) is ever encoded.
            prop_assume!(Decimal::new(price, price_scale) < moonbus_common::MONEY_LIMIT);
            let money = |units: i64| PositiveMoney::new(Decimal::new(units, price_scale)).unwrap();
            let tick = Tick {
                venue: "binance".parse().unwrap(),
                symbol: "PEPE-USDT".parse().unwrap(),
                price: money(price),
                bid: optional.0.then(|| money(price / 2 + 1)),
                ask: optional.1.then(|| money(price)),
                size: optional.2.then_some(NonNegativeMoney::ZERO),
                seq,
                ts,
            };
            let data = TickData::from(&tick);
            let mut encoder = TickEncoder::default();
            let ours = encoder.encode(&tick_prefix(&tick.venue, &tick.symbol), &data);
            prop_assert_eq!(ours, encode(&tick));
        }
    }

    #[test]
    fn books_and_bars_are_byte_for_byte_serdes() {
        let level = |p: &str, s: &str| {
            (
                p.parse::<PositiveMoney>().unwrap(),
                s.parse::<NonNegativeMoney>().unwrap(),
            )
        };
        let book = Book {
            venue: "coinbase".parse().unwrap(),
            symbol: "ETH-USD".parse().unwrap(),
            bids: vec![level("3500.10", "1.5"), level("3499", "0.00000001")],
            asks: vec![level("3500.2", "0")],
            seq: 7,
            ts: 1_764_129_600_000_000_000,
        };
        let mut encoder = TickEncoder::default();
        assert_eq!(encoder.book("coinbase", &book), encode(&book));
        let empty = Book {
            bids: vec![],
            asks: vec![],
            ..book.clone()
        };
        assert_eq!(encoder.book("coinbase", &empty), encode(&empty));
        let all = Book {
            venue: "all".parse().unwrap(),
            ..book.clone()
        };
        assert_eq!(encoder.book("all", &book), encode(&all));
        assert_eq!(
            encoder.levels("all", &book.symbol, &book.bids, &book.asks, 7, book.ts),
            encode(&all)
        );
        let bar = Bar {
            venue: Venue::sim(),
            symbol: "BTC-USD".parse().unwrap(),
            interval: "15m".parse().unwrap(),
            open: "97000.5".parse().unwrap(),
            high: "97100".parse().unwrap(),
            low: "96999.99".parse().unwrap(),
            close: "97050.00".parse().unwrap(),
            volume: "12.345".parse().unwrap(),
            trades: 42,
            start_ts: 1_764_129_600_000_000_000,
            end_ts: 1_764_130_500_000_000_000,
        };
        assert_eq!(encoder.bar(&bar), encode(&bar));
    }

    #[test]
    fn the_longest_ticks_fit_and_a_long_prefix_takes_the_other_path() {
        // 29 digits at scale 28: the longest decimal there is, in every field.
        let longest = PositiveMoney::new(Decimal::from_parts(
            u32::MAX,
            u32::MAX,
            0x3FFF_FFFF,
            false,
            28,
        ))
        .unwrap();
        let tick = Tick {
            venue: "binance".parse().unwrap(),
            symbol: "PEPE-USDT".parse().unwrap(),
            price: longest,
            bid: Some(longest),
            ask: Some(longest),
            size: Some(NonNegativeMoney::new(longest.get()).unwrap()),
            seq: u64::MAX,
            ts: u64::MAX,
        };
        let data = TickData::from(&tick);
        let mut encoder = TickEncoder::default();
        let prefix = tick_prefix(&tick.venue, &tick.symbol);
        let ours = encoder.encode(&prefix, &data);
        assert_eq!(ours, encode(&tick));
        let long = [b'x'; 400];
        let other = encoder.encode(&long, &data);
        assert_eq!(&other[..400], &long[..]);
        assert_eq!(&other[400..], &ours[prefix.len()..]);
    }

    #[test]
    fn prices_to_f64() {
        assert_eq!(to_f64(Decimal::new(9_700_012, 2)), 97000.12);
        assert_eq!(to_f64(Decimal::new(5, 0)), 5.0);
    }

    #[test]
    fn small_and_zero_values() {
        assert_eq!(text(Decimal::new(5, 3)), "0.005");
        assert_eq!(text(Decimal::new(0, 2)), "0.00");
        assert_eq!(text(Decimal::new(9_700_010, 2)), "97000.10");
        assert_eq!(text(Decimal::new(-15, 1)), "-1.5");
    }
}
