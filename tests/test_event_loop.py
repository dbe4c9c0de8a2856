"""The services' event loop (services/common/bus.py `run`): uvloop by default, asyncio's own
with MOONBUS_EVENT_LOOP=asyncio, a clear refusal of anything else; SIGTERM still stops a
service cleanly on either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import uvloop

from services.common import bus
from services.devstack.natsserver import REPO_ROOT

# A service's shape: bus.run(main), main waits for the stop event that SIGTERM sets.
SERVICE = """
import asyncio, sys
from services.common.bus import run

async def main(stop):
    print(type(asyncio.get_running_loop()).__module__, flush=True)
    await stop.wait()
    print("stopped", flush=True)

run(main)
"""


def test_the_factory_follows_moonbus_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONBUS_EVENT_LOOP", raising=False)
    assert bus.event_loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("MOONBUS_EVENT_LOOP", "asyncio")
    assert bus.event_loop_factory() is None
    monkeypatch.setenv("MOONBUS_EVENT_LOOP", "trio")
    with pytest.raises(SystemExit, match="MOONBUS_EVENT_LOOP='trio': expected 'uvloop' or 'asyncio'"):
        bus.event_loop_factory()


@pytest.mark.parametrize(("choice", "module"), [(None, "uvloop"), ("asyncio", "asyncio.unix_events")])
def test_a_service_runs_on_its_loop_and_stops_on_sigterm(choice: str | None, module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOONBUS_EVENT_LOOP"}
    if choice:
        env["MOONBUS_EVENT_LOOP"] = choice
    process = subprocess.Popen([sys.executable, "-c", SERVICE], cwd=REPO_ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == module
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped"


def test_a_bad_choice_stops_a_service_with_the_reason() -> None:
    env = {**os.environ, "MOONBUS_EVENT_LOOP": "trio"}
    done = subprocess.run([sys.executable, "-c", SERVICE], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "MOONBUS_EVENT_LOOP='trio': expected 'uvloop' or 'asyncio'" in done.stderr
