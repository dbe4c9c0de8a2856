"""Run the whole system as `make run` does, on paper, for some minutes, and print what the
account did: fills, fees, PnL (README "Choosing the defaults").

    .venv/bin/python -m examples.paper_minutes --minutes 5 [--strategy momentum]

On a free port in a temp dir: it does not touch a running `make run`.
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


async def paper(minutes: float, strategy: str | None) -> dict:
    env = {"MOONBUS__GATEWAY__PORT": str(free_port())}
    if strategy:
        env["MOONBUS__TRADING_AGENT__STRATEGY"] = strategy
    system = System()
    with tempfile.TemporaryDirectory(prefix="moonbus-paper-") as tmp:
        await asyncio.to_thread(lambda: system.start(port=free_port(), moon_dir=Path(tmp), out=None, env=env,
                                                     write_env_file=False))
        try:
            creds = system.env_for("operator")
            nc = await nats.connect(server_urls(creds["NATS_URL"]), user="operator",
                                    password=creds["NATS_PASSWORD"], inbox_prefix="_INBOX.operator")
            fills = 0

            async def on_report(msg) -> None:
                nonlocal fills
                if json.loads(msg.data).get("last_fill_quantity"):
                    fills += 1

            await nc.subscribe(S.ALL_REPORTS, cb=on_report)
            await asyncio.sleep(minutes * 60)
            reply = await nc.request(S.RISK_POSITIONS, b"{}", timeout=10)
            account = json.loads(reply.data)["account"]
            await nc.close()
        finally:
            await asyncio.to_thread(system.stop)
    return {"minutes": minutes, "strategy": strategy or "(moonbus.toml)", "fills": fills,
            "fees": account["fees"], "equity": account["equity"], "realized_pnl": account["realized_pnl"],
            "unrealized_pnl": account["unrealized_pnl"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--strategy", default=None)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(paper(args.minutes, args.strategy))))


if __name__ == "__main__":
    main()
