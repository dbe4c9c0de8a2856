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

Baseline, measured in the same run on the same schedule: request/reply round trips to a
trivial echo responder (a separate process) through the same server. The order path
crosses the bus five times, 2.5 such round trips (publish -> ORDERS -> execution, the risk
request and reply, report -> subscriber), plus a JetStream write: `latency_us` against
`echo_baseline_us` shows what the services add.
"""

from __future__ import annotations

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


def run(ctx: Context) -> dict:
    seconds, burst = (3, 3000) if ctx.quick else (10, 20000)
    driver = build_driver(ctx.root, "order_path")
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
        "driver": "rust-execution/benches/order_path.rs (cargo bench), async-nats, one thread",
    }


def figures(result: dict) -> dict:
    """The driver's result with percentiles (µs) instead of the raw samples."""
    out = {k: v for k, v in result.items() if k not in ("latency_us", "hops_us", "echo_baseline_us")}
    if result.get("echo_baseline_us"):
        out["echo_baseline_us"] = summary(result["echo_baseline_us"])
    out["latency_us"] = {status: summary(samples) for status, samples in result["latency_us"].items()}
    out["hops_us"] = {hop: summary(samples) for hop, samples in result["hops_us"].items()}
    return out
