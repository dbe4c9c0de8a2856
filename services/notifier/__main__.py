"""`python -m services.notifier`: run the notifier until SIGINT/SIGTERM."""

from services.common.bus import run, setup_logging

from .service import SERVICE, main

setup_logging(SERVICE)
run(main)
