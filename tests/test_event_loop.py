"""The event loop of the Python services (services/common/bus.py `loop_factory`): uvloop by
default, asyncio's own with MOONBUS_EVENT_LOOP=asyncio, a clear error for anything else; and a
service's `run` stops cleanly on SIGTERM on either loop (each in its own process, as a service)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from services.devstack.natsserver import REPO_ROOT

SERVICE = """
import asyncio, sys
from services.common.bus import run

async def main(stop):
    loop = asyncio.get_running_loop()
    print(type(loop).__module__, flush=True)
    await stop.wait()
    print("stopped", flush=True)

run(main)
"""


def _service(loop: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "MOONBUS_EVENT_LOOP"}
    if loop is not None:
        env["MOONBUS_EVENT_LOOP"] = loop
    return subprocess.Popen([sys.executable, "-c", SERVICE], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize(("choice", "module"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio"),
                                                (" UVLOOP ", "uvloop")])
def test_a_service_runs_on_the_chosen_loop_and_stops_on_sigterm(choice: str | None, module: str) -> None:
    proc = _service(choice)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.split(".")[0] == module, (first, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "stopped"


def test_an_unknown_loop_is_refused_with_the_choices() -> None:
    proc = _service("trio")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "MOONBUS_EVENT_LOOP='trio': expected 'uvloop' or 'asyncio'" in err
