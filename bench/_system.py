"""What the order-path benchmarks share: a private system (nats-server with the secure
config on a free port, in a temp dir, and the release binaries they name) and the Rust
driver that measures it (`cargo bench -p rust-execution --bench <name>`).

Risk's limits are opened wide for the benchmarks: they measure the path, not the
rules, and thousands of paper orders a second would trip every budget in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats

from bench.__main__ import percentiles
from services.common.bus import run_async
from services.devstack.launcher import System, all_active, risk_states
from services.devstack.natsserver import free_port

# Every limit out of the way (0 = off for the counts and percentages).
OPEN_RISK = {
    "MOONBUS__RISK__STARTING_CASH": '"1000000000"',
    "MOONBUS__RISK__MAX_ORDER_NOTIONAL": '"1000000000"',
    "MOONBUS__RISK__MAX_POSITION_NOTIONAL": '"1000000000"',
    "MOONBUS__RISK__MAX_GROSS_EXPOSURE": '"1000000000"',
    "MOONBUS__RISK__MAX_DAILY_LOSS": '"1000000000"',
    "MOONBUS__RISK__MAX_DRAWDOWN_PCT": "100",
    "MOONBUS__RISK__RATE_LIMIT_AGENT": "0",
    "MOONBUS__RISK__RATE_LIMIT_GLOBAL": "0",
    "MOONBUS__RISK__RATE_LIMIT_REDUCE_ONLY": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS": "0",
    "MOONBUS__RISK__MAX_OPEN_ORDERS_PER_SYMBOL": "0",
    "MOONBUS__RISK__CIRCUIT_BREAKER_PCT": "0",
    "MOONBUS__RISK__PRICE_BAND_PCT": "0",
}


@contextlib.contextmanager
def running(services: list[str], env: dict[str, str]) -> Iterator[System]:
    """nats-server and `services` (release binaries), stopped afterwards. Quiet logs:
    a log line per order would be part of what is measured."""
    with tempfile.TemporaryDirectory(prefix="moonbus-bench-") as moon_dir:
        system = System().start(port=free_port(), moon_dir=Path(moon_dir), services=services, out=None,
                                env={"RUST_LOG": "warn", **env}, write_env_file=False)
        try:
            yield system
        except BaseException:
            print(system.tail(30))
            raise
        finally:
            system.stop()


def wait_until_serving(system: System, symbols: list[str], services: tuple[str, ...] = ("risk", "execution"),
                       timeout: float = 60.0) -> None:
    """Until risk has rebuilt its state and trades every symbol (its verdict is ACTIVE: it
    has fresh prices, else it refuses every check), and execution answers."""
    run_async(_wait_until_serving(system, symbols, services, timeout))


async def _wait_until_serving(system: System, symbols: list[str], services: tuple[str, ...], timeout: float) -> None:
    env = system.env_for("operator")
    nc = await nats.connect(env["NATS_URL"], user=env["NATS_USER"], password=env["NATS_PASSWORD"], inbox_prefix=f"_INBOX.{env['NATS_USER']}")
    try:
        async with risk_states(nc) as states:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            executing = "execution" not in services
            while not (executing and all_active(states, symbols)):
                if not executing:
                    with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
                        executing = bool((await nc.request("exec.api.version", b"{}", timeout=1)).data)
                if loop.time() > deadline:
                    raise TimeoutError(f"not serving within {timeout:.0f}s: verdicts {states}, execution "
                                       f"{'up' if executing else 'down'}\n{system.tail(30)}")
                await asyncio.sleep(0.1)
    finally:
        await nc.close()


def summary(samples: list[float]) -> dict:
    """`percentiles` of µs samples, rounded to 0.1 µs."""
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in percentiles(samples).items()}


def agent_child_env(user_env: dict[str, str], config: Path) -> dict[str, str]:
    """The environment of an agent process a benchmark starts: this one's, without its own
    NATS_ / MOONBUS settings (the benchmark's config and credentials instead), but for the
    event loop under test (MOONBUS_EVENT_LOOP)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NATS_", "MOONBUS")) or k == "MOONBUS_EVENT_LOOP"}
    return {**env, "MOONBUS_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **user_env}


def driver_env(system: System) -> dict[str, str]:
    """The driver runs as the operator (orders as agent `operator`, the echo requests) and, for
    `risk.api.check`, as `execution`, its only caller (CHECK_); its echo responder (the bus
    baseline) as `market-data`, a user that may subscribe `md.api.>` and answer."""
    echo, check = system.env_for("market-data"), system.env_for("execution")
    return {**os.environ, **system.env_for("operator"),
            "ECHO_USER": echo["NATS_USER"], "ECHO_PASSWORD": echo["NATS_PASSWORD"],
            "CHECK_USER": check["NATS_USER"], "CHECK_PASSWORD": check["NATS_PASSWORD"]}


def build_driver(root: Path, bench: str) -> Path:
    """`cargo bench --no-run` the driver (release profile) and return its executable, run
    directly afterwards: a rebuild never lands inside a measurement or its timeout."""
    argv = ["cargo", "bench", "-q", "-p", "rust-execution", "--bench", bench, "--no-run",
            "--message-format=json"]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        artifact = json.loads(line)
        if artifact.get("reason") == "compiler-artifact" and artifact["target"]["name"] == bench \
                and artifact.get("executable"):
            return Path(artifact["executable"])
    raise RuntimeError(f"cargo built no executable for bench {bench}")


def drive(driver: Path, args: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run the Rust driver; its last stdout line is its JSON result."""
    argv = [str(driver), "--bench", *args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
