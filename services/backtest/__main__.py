"""`python -m services.backtest [--workers N|auto]`: the backtest worker (user `backtest`)
until SIGINT/SIGTERM.

With `--workers N` (`auto`: one per core, what `make run` starts) this process only keeps N
worker processes running, each one queue-group member (a run is CPU-bound Python: one core
each): it restarts one that dies and stops them all on SIGINT/SIGTERM. Under compose, scale
containers instead (`--scale backtest-worker=N`), one worker each.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

import services.common.entry  # noqa: F401 - first, before nats: see there
from services.common.bus import run, setup_logging

from .worker import SERVICE, main

log = logging.getLogger("services.backtest")


def keep_running(count: int) -> int:
    """Run `count` single workers as child processes until SIGINT/SIGTERM; restart the dead."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    argv = [sys.executable, "-m", "services.backtest", "--workers", "1"]
    children = [subprocess.Popen(argv) for _ in range(count)]
    log.info("%d backtest workers started (pids %s)", count, ", ".join(str(c.pid) for c in children))
    while not stopping:
        time.sleep(0.5)
        for i, child in enumerate(children):
            if child.poll() is not None and not stopping:
                log.warning("backtest worker %d exited with %s: starting another", child.pid, child.returncode)
                time.sleep(1)  # no busy loop if every start fails
                children[i] = subprocess.Popen(argv)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.backtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1", help="worker processes: a number, or auto (one per core)")
    args = parser.parse_args()
    count = (os.cpu_count() or 1) if args.workers == "auto" else int(args.workers)
    setup_logging(SERVICE)
    if count <= 1:
        run(main)
    else:
        sys.exit(keep_running(count))


cli()
