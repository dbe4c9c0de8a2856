"""`python -m services.swarm_agent`: serve agent.api.swarm.ask until SIGINT/SIGTERM."""

import services.common.entry  # noqa: F401 - first, before nats: see there
from services.common.bus import run, setup_logging

from .service import SERVICE, main

setup_logging(SERVICE)
run(main)
