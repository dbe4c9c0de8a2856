"""`python -m services.gateway`: serve the HTTP API on [gateway] host/port until SIGINT/SIGTERM."""

import logging
import sys

import services.common.entry  # noqa: F401 - first, before nats: see there
from services.common.bus import run, setup_logging

from .app import SERVICE
from .config import GatewayConfigError
from .service import main

setup_logging(SERVICE)
try:
    run(main)
except GatewayConfigError as e:  # a refusal to start, said plainly (no traceback)
    logging.getLogger(SERVICE).error("refusing to start: %s", e)
    sys.exit(2)
