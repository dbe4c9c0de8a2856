"""`python -m services.risk_agent`: run the risk agent until SIGINT/SIGTERM."""

from services.common.bus import run, setup_logging

from .service import SERVICE, main

setup_logging(SERVICE)
run(main)
