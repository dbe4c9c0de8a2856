"""`python -m services.swarm_agent`: serve agent.api.swarm.ask until SIGINT/SIGTERM."""

from services.common.bus import run, setup_logging

from .service import SERVICE, main

setup_logging(SERVICE)
run(main)
