"""The launcher's single-service controls used by the fault tests: kill one service
(SIGKILL, a crash) and start it again, while nats-server and the others keep running."""

from __future__ import annotations

import signal

import pytest

from services.devstack.launcher import ServiceSpec, System
from services.devstack.natsserver import free_port

STAND_IN = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("up as", os.environ["NATS_USER"], "pid", os.getpid(), flush=True)
while True:
    time.sleep(0.1)
"""


def test_one_service_is_killed_and_restarted_while_the_rest_runs(tmp_path):
    specs = [ServiceSpec(name, ("-c", STAND_IN), "python") for name in ("market-data", "risk")]
    system = System().start(port=free_port(), moon_dir=tmp_path, services=specs, out=None)
    try:
        first = system.wait_for_output("risk", r"up as risk pid \d+", timeout=30)
        system.wait_for_output("market-data", r"up as market-data", timeout=30)

        assert system.kill("risk") == -signal.SIGKILL
        assert not system.running("risk")
        assert system.running("market-data") and system.nats.running
        assert not any("exited unexpectedly" in line for line in system.output("risk"))

        system.restart("risk")
        second = system.wait_for_output("risk", r"up as risk pid \d+", timeout=30)
        assert second != first, "the new run's line, not the old one"
        assert system.output("risk") == [second]
        assert system.running("risk")
    except BaseException:
        print(system.tail())
        raise
    finally:
        system.stop()
    assert system.returncode("risk") == 0, "the restarted service stops cleanly with the rest"


def test_restarting_a_running_service_is_refused(tmp_path):
    system = System().start(port=free_port(), moon_dir=tmp_path, out=None,
                            services=[ServiceSpec("risk", ("-c", STAND_IN), "python")])
    try:
        system.wait_for_output("risk", r"up as risk", timeout=30)
        with pytest.raises(RuntimeError, match="still running"):
            system.restart("risk")
    finally:
        system.stop()
