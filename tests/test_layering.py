"""The layering of services/: the agents and the gateway import the contract, the bus runtime
and the LLM layer, never the dev stack (launcher, nats-server management), which the images
do not ship; the operator tools only from the gateway and the CLI; no service imports another."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.common.config import REPO_ROOT

AGENTS = ["trading_agent", "risk_agent", "sentiment_agent", "swarm_agent"]


def imported_by(module: str) -> set[str]:
    """The services.* modules importing `module` loads (in a fresh interpreter)."""
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('services'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("service", [*AGENTS, "gateway"])
def test_no_service_loads_the_dev_stack(service):
    loaded = imported_by(f"services.{service}.service" if service != "gateway" else "services.gateway.app")
    assert not {m for m in loaded if m.startswith("services.devstack")}, sorted(loaded)
    others = {m.split(".")[1] for m in loaded if m.count(".")} - {service, "common", "contract", "ops"}
    assert not others, f"services.{service} loads other services: {others}"
    if service != "gateway":
        assert not {m for m in loaded if m.startswith("services.ops")}, "operator tools are the gateway's and CLI's"


def test_the_images_do_not_ship_the_dev_stack():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert "services/devstack" in ignored
