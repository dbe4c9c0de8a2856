"""Order -> report latency through the real order path, and the most it sustains.

Starts nats-server (secure config), rust-market-data (the simulated feed), rust-risk
and rust-execution from the release build, then runs the Rust driver
(rust-execution/benches/order_path.rs) as the operator:

1. fixed rate: MARKET orders at `RATE` orders/s, paced open loop, for `SECONDS` s
   (after a 1 s warm-up that is left out), round-robin over the three symbols, BUY and
   SELL in turn; latency = publish on orders.submit.<symbol> -> terminal report on
   exec.report.<symbol> received (FILLED expected), with the hops read off the reports;
2. burst: `BURST` orders published as fast as possible; the rate at which reports come
   out in the steady middle of the burst is the maximum sustained rate.

The fsync cost: the same two runs again with nats-server's JetStream `sync_interval` set to
the other policy than proto/nats/moonbus.conf's (`always`: fsync after every write, vs the
server's default of every 2 minutes), from a copy of the config, in the same run; the
results' `sync_interval` block holds both, the configured one first.

Baseline, measured in the same run on the same schedule: request/reply round trips to a
trivial echo responder (a separate process) through the same server. The order path
crosses the bus five times, 2.5 such round trips (publish -> ORDERS -> execution, the risk
request and reply, report -> subscriber), plus a JetStream write: `latency_us` against
`echo_baseline_us` shows what the services add.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from bench.__main__ import Context
from bench._system import (
    OPEN_RISK,
    build_driver,
    drive,
    driver_env,
    running,
    summary,
    wait_until_serving,
)

SYMBOLS = "BTC-USD:0.001,ETH-USD:0.01,SOL-USDC:0.5"
RATE = 1000


SYNC_LINE = re.compile(r'^(\s*sync_interval:\s*)"?([^"\s]+)"?', re.MULTILINE)


def configured_sync(root: Path) -> str:
    """proto/nats/moonbus.conf's JetStream sync_interval."""
    found = SYNC_LINE.search((root / "proto" / "nats" / "moonbus.conf").read_text())
    if not found:
        raise RuntimeError("proto/nats/moonbus.conf states no jetstream sync_interval")
    return found.group(2)


@contextlib.contextmanager
def nats_sync(root: Path, sync: str) -> Iterator[None]:
    """Servers started meanwhile use a copy of moonbus.conf with `sync_interval: <sync>`."""
    from services.devstack import launcher
    from services.devstack.natsserver import NatsServer

    # Quoted: nats-server reads an unquoted 2m as the number 2,000,000, then as that many seconds.
    text = SYNC_LINE.sub(lambda m: f'{m.group(1)}"{sync}"', (root / "proto" / "nats" / "moonbus.conf").read_text())
    with tempfile.TemporaryDirectory(prefix="moonbus-sync-") as where:
        config = Path(where) / "moonbus.conf"
        config.write_text(text)
        with mock.patch.object(launcher, "NatsServer", functools.partial(NatsServer, config=config)):
            yield


def measure(seconds: int, burst: int, driver: Path) -> dict:
    symbols = [pair.split(":")[0] for pair in SYMBOLS.split(",")]
    with running(["market-data", "risk", "execution"], OPEN_RISK) as system:
        wait_until_serving(system, symbols)
        env = driver_env(system)
        fixed = drive(driver, ["--mode", "rate", "--rate", str(RATE), "--seconds", str(seconds), "--warmup", "1",
                               "--symbols", SYMBOLS, "--run", "rate"], env, timeout=2 * seconds + 120)
        most = drive(driver, ["--mode", "burst", "--orders", str(burst), "--symbols", SYMBOLS, "--run", "burst"],
                     env, timeout=600)
    return {
        "fixed_rate": figures(fixed),
        "burst": {**figures(most), "sustained_orders_per_s": round(most["sustained_rate"])},
    }


def run(ctx: Context) -> dict:
    seconds, burst = (3, 3000) if ctx.quick else (10, 20000)
    driver = build_driver(ctx.root, "order_path")
    configured = configured_sync(ctx.root)
    other = "2m" if configured == "always" else "always"
    result = measure(seconds, burst, driver)
    with nats_sync(ctx.root, other):
        compared = measure(seconds, burst, driver)
    return {
        **result,
        "sync_interval": {
            configured: sync_figures(result, configured),
            other: sync_figures(compared, other),
        },
        "driver": "rust-execution/benches/order_path.rs (cargo bench), async-nats, one thread",
    }


def sync_figures(result: dict, sync: str) -> dict:
    """The headline figures of one sync policy."""
    fixed = result["fixed_rate"]["latency_us"].get("FILLED", {})
    return {
        "sync_interval": sync,
        "fixed_rate_latency_us": {k: fixed.get(k) for k in ("p50", "p90", "p99", "max")},
        "sustained_orders_per_s": result["burst"]["sustained_orders_per_s"],
    }


def figures(result: dict) -> dict:
    """The driver's result with percentiles (µs) instead of the raw samples."""
    out = {k: v for k, v in result.items() if k not in ("latency_us", "hops_us", "echo_baseline_us")}
    if result.get("echo_baseline_us"):
        out["echo_baseline_us"] = summary(result["echo_baseline_us"])
    out["latency_us"] = {status: summary(samples) for status, samples in result["latency_us"].items()}
    out["hops_us"] = {hop: summary(samples) for hop, samples in result["hops_us"].items()}
    return out
