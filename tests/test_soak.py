"""The soak, short version (the 10-minute one: `make soak`, bench/soak.py): the whole
system (nats-server, the release binaries, every agent, the gateway, the launcher's
supervisor) for 60 s with the simulated feed asked for 10,000 ticks/s over 100 symbols.
No ErrorEvent on `errors.>`, no service crashed or restarted, and no process's RSS grows
without bound: at the end at most twice what it was after the warm-up, plus 50 MB (a
generous bound: the slope itself is measured by `make soak`, not asserted here).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import FULL, SECONDS_ENV, SYMBOLS, TICK_INTERVAL_MS, Plan, full_plan, soak
from services.devstack.launcher import SERVICES
from services.devstack.natsserver import REPO_ROOT

pytestmark = pytest.mark.e2e

PLAN = Plan(seconds=60, warmup=20, symbols=SYMBOLS, tick_interval_ms=TICK_INTERVAL_MS)


async def test_a_minute_at_10000_ticks_per_s_has_no_error_and_no_growing_rss(tmp_path: Path) -> None:
    missing = [s.command[0] for s in SERVICES.values() if s.kind == "rust" and not (REPO_ROOT / s.command[0]).exists()]
    if missing:
        pytest.fail(f"release binaries missing ({', '.join(missing)}): run `make setup` (or `make test`)")
    result = await soak(PLAN, tmp_path)
    assert not result["error_events"], f"ErrorEvents: {result['error_samples']}"
    assert not result["restarts"] and not result["unexpected_exits"], (result["restarts"], result["unexpected_exits"])
    assert set(result["services"]) == {*SERVICES, "nats-server"}, f"RSS not sampled for every process: {result}"
    grown = {name: s for name, s in result["services"].items()
             if s["rss_mb_end"] > 2 * s["rss_mb_after_warmup"] + 50}
    assert not grown, f"RSS more than doubled after the warm-up: {grown}"
    assert result["ticks_per_s_published"], "market-data published no ticks (md_ticks_out_total)"
    # nats-server's live Go heap, read from its profiling port (127.0.0.1) after a collection
    assert 0 < result["services"]["nats-server"]["go_live_heap_mb_end"] < 10_000, result["services"]["nats-server"]


def test_a_longer_soak_is_asked_for_in_seconds() -> None:
    assert full_plan({}) == FULL
    assert full_plan({SECONDS_ENV: "2400"}).seconds == 2400
    for bad in ("ten", "60", "nan"):
        with pytest.raises(SystemExit, match=SECONDS_ENV):
            full_plan({SECONDS_ENV: bad})
