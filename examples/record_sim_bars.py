"""Record the bars `make run`'s simulated feed makes, as a replay file of bar rows, to
backtest on them (README "Choosing the defaults").

    .venv/bin/python -m examples.record_sim_bars data/backtest/sim-1s.csv --minutes 20

Starts nats-server and rust-market-data alone (moonbus.toml's sim feed: seeded, so the
same minutes every time) on a free port in a temp dir, and writes every closed 1s bar of
every symbol until the time is up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import nats

from services.common.bus import server_urls
from services.contract import subjects as S
from services.devstack.launcher import System
from services.devstack.natsserver import free_port


async def record(path: Path, minutes: float) -> int:
    system = System()
    with tempfile.TemporaryDirectory(prefix="moonbus-record-") as tmp:
        await asyncio.to_thread(lambda: system.start(port=free_port(), moon_dir=Path(tmp), out=None,
                                                     services=["market-data"], write_env_file=False))
        try:
            env = system.env_for("operator")
            nc = await nats.connect(server_urls(env["NATS_URL"]), user="operator", password=env["NATS_PASSWORD"],
                                    inbox_prefix="_INBOX.operator")
            rows: list[str] = []

            async def on_bar(msg) -> None:
                b = json.loads(msg.data)
                rows.append(f"{b['start_ts']},{b['symbol']},{b['interval']},{b['open']},{b['high']},{b['low']},"
                            f"{b['close']},{b['volume']}")

            await nc.subscribe(S.bar("1s", "sim", ">"), cb=on_bar)
            await asyncio.sleep(minutes * 60)
            await nc.close()
        finally:
            await asyncio.to_thread(system.stop)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {minutes:g} minutes of make run's simulated feed (examples/record_sim_bars.py)\n"
                    "ts,symbol,interval,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--minutes", type=float, default=20.0)
    args = parser.parse_args()
    print(f"{asyncio.run(record(args.path, args.minutes))} bars -> {args.path}")


if __name__ == "__main__":
    main()
