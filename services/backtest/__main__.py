"""`python -m services.backtest`: the backtest worker (user `backtest`) until SIGINT/SIGTERM."""

from services.common.bus import run, setup_logging

from .worker import SERVICE, main

setup_logging(SERVICE)
run(main)
