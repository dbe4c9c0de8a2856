"""rust-market-data flat out: ticks/s published for 10,000 symbols from the sim and
the replay feed, against a raw async-nats publisher of the same payloads measured in
the same run; tick-in -> handed-to-the-client latency; RSS at 10,000 symbols.

Starts its own nats-server (no auth, a free port) and runs the Rust driver
(rust-market-data/benches/market_data.rs, `cargo bench`) in three modes, interleaved
over `ROUNDS` rounds so that the load of this shared machine hits them alike:

- raw: `client.publish(subject, payload)` in a loop over the sim's pre-encoded ticks;
- sim: the real engine with the sim feed asked for 10 M ticks/s (bars, books every
  second per symbol, alerts and metrics on: the default config), so it runs flat out;
- replay: the real engine reading a 200,000-row CSV of the 10,000 symbols as fast as
  possible, looping.

Figures: the median over the rounds; `ratio_to_raw` is the median of the per-round
ratios. Latency percentiles are upper bounds (the histogram bucket the rank falls in),
from the engine's own `md_publish_latency_seconds` histogram (1 tick in 8 timed).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.__main__ import Context
from services.devstack.natsserver import free_port

SYMBOLS = 10_000
ROUNDS = 3
MODES = ("raw", "sim", "replay")


def run(ctx: Context) -> dict:
    seconds, rounds = (2, 1) if ctx.quick else (5, ROUNDS)
    subprocess.run(["cargo", "bench", "-q", "-p", "rust-market-data", "--bench", "market_data", "--no-run"],
                   cwd=ctx.root, check=True, timeout=1800)
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="moonbus-md-bench-") as tmp, nats_server(ctx.root) as url:
        replay_file = str(Path(tmp) / "ticks.csv")
        for _ in range(rounds):
            for mode in MODES:
                args = [mode, url, str(SYMBOLS), str(seconds)] + ([replay_file] if mode == "replay" else [])
                runs[mode].append(drive(ctx.root, args, timeout=seconds + 300))
    raw = [r["ticks_per_s"] for r in runs["raw"]]
    out: dict = {"symbols": SYMBOLS, "rounds": rounds, "seconds_per_run": seconds,
                 "raw_ticks_per_s": round(statistics.median(raw))}
    for mode in ("sim", "replay"):
        rates = [r["ticks_per_s"] for r in runs[mode]]
        last = runs[mode][-1]
        out[mode] = {
            "ticks_per_s": round(statistics.median(rates)),
            "ratio_to_raw": round(statistics.median(r / b for r, b in zip(rates, raw)), 3),
            "latency_us_at_most": last["latency_us_at_most"],
            "rss_mb": round(max(r["rss_mb"] for r in runs[mode]), 1),
            "history_bars_per_series": last["history_bars_per_series"],
            "dropped_bus_full": sum(r["dropped_bus_full"] for r in runs[mode]),
            "all_runs_ticks_per_s": [round(r) for r in rates],
        }
    out["raw_all_runs_ticks_per_s"] = [round(r) for r in raw]
    out["aims"] = {"ticks_per_s": 500_000, "ratio_to_raw": 0.7, "p99_us": 100, "rss_mb": 100}
    out["driver"] = "rust-market-data/benches/market_data.rs (cargo bench), async-nats, tokio multi-thread"
    return out


def drive(root: Path, args: list[str], timeout: float, bench: str = "market_data") -> dict:
    argv = ["cargo", "bench", "-q", "-p", "rust-market-data", "--bench", bench, "--", *args]
    done = subprocess.run(argv, cwd=root, env={**os.environ, "RUST_LOG": "error"}, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class nats_server:  # noqa: N801 (a context manager used like a function)
    """A plain nats-server on a free port, killed on exit."""

    def __init__(self, root: Path) -> None:
        self.binary = root / ".venv" / "bin" / "nats-server"
        self.port = free_port()

    def __enter__(self) -> str:
        self.process = subprocess.Popen([str(self.binary), "-a", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return f"nats://127.0.0.1:{self.port}"
            except OSError:
                if time.monotonic() > deadline:
                    self.process.kill()
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()
