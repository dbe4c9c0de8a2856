"""`python -m services.gateway`: serve the HTTP API on [gateway] host/port until SIGINT/SIGTERM."""

from services.common.bus import run, setup_logging

from .app import SERVICE
from .service import main

setup_logging(SERVICE)
run(main)
