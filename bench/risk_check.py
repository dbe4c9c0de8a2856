"""`risk.api.check` round trips against the real rust-risk, with the bus as baseline.

Starts nats-server (secure config), rust-market-data (risk refuses checks without fresh
prices) and rust-risk from the release build, then runs the Rust driver
(rust-execution/benches/risk_check.rs) as the operator: one request in flight, the way
execution asks, alternating blocks of checks and of the same request to a trivial echo
responder (a separate process, through the same server). The echo round trip is the bus;
`risk_own_us` (check minus echo, per percentile) is what risk itself adds.
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


def run(ctx: Context) -> dict:
    blocks, per_block = (2, 500) if ctx.quick else (10, 2000)
    driver = build_driver(ctx.root, "risk_check")
    # No report ever releases these checks' reservations: let them lapse at once, so risk
    # holds about as many as it would with execution sending reports (one per order in flight).
    with running(["market-data", "risk"], {**OPEN_RISK, "MOONBUS__RISK__RESERVATION_TTL_MS": "1"}) as system:
        wait_until_serving(system, ["BTC-USD"], services=("risk",))
        env = driver_env(system)
        result = drive(driver, ["--blocks", str(blocks), "--per-block", str(per_block), "--symbol", "BTC-USD"],
                       env, timeout=600)
    check = summary(result["check_us"])
    echo_rtt = summary(result["echo_us"])
    # Per percentile; not at p99.9, where two noisy tails are subtracted.
    own = {k: round(check[k] - echo_rtt[k], 1) for k in ("p50", "p90", "p99")}
    return {
        "check_us": check,
        "echo_baseline_us": echo_rtt,
        "risk_own_us": own,
        "check_outcomes": result["check_outcomes"],
        "requests_per_target": result["requests_per_target"],
        "driver": "rust-execution/benches/risk_check.rs (cargo bench), async-nats, one request in flight",
    }
