"""Bars on time: how late a closed bar reaches a subscriber after its boundary.

A bar is published at its boundary (the bar clock, rust-market-data/src/engine.rs: a
tokio sleep to 4 ms before each whole second, then the wall clock watched until it) or
at the first tick after it, whichever comes first; the aim is within 100 µs.

Starts its own nats-server (no auth, a free port) and runs the Rust driver
(rust-market-data/benches/bar_timing.rs, `cargo bench`): the real engine with the sim
feed (default pace, 200 ms per symbol) and 1s bars, and a subscriber taking
`received - end_ts` for every bar. Baselines measured in the same process and run, on the
same boundaries: tokio's own `sleep_until` lateness, the old bar timer (a sleep to the
boundary + 1 ms margin: what bars were before), and half a bus round trip.
"""

from __future__ import annotations

from bench.__main__ import Context
from bench.market_data import drive, nats_server

SYMBOLS = 10


def run(ctx: Context) -> dict:
    seconds = 5 if ctx.quick else 60
    with nats_server(ctx.root) as url:
        result = drive(ctx.root, [url, str(SYMBOLS), str(seconds)], timeout=seconds + 600, bench="bar_timing")
    result["aims"] = {"bar_lateness_p99_us": 100}
    result["driver"] = "rust-market-data/benches/bar_timing.rs (cargo bench), async-nats, tokio multi-thread"
    return result
