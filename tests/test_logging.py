"""MOONBUS_LOG_FORMAT=json: one valid JSON object per line, whatever the message holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging
from services.common.bus import setup_logging
setup_logging("test-service")
log = logging.getLogger("moonbus.test")
log.info("quote ' and \\"double\\" and a newline\\nand unicode \\u20ac: %s", {"k": 'v'})
try:
    raise ValueError("boom")
except ValueError:
    log.exception("failed")
"""


def test_json_logs_are_json() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30,
                          env={"MOONBUS_LOG_FORMAT": "json", "PATH": ""}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # a multi-line message or traceback stays on one line
    first, second = (json.loads(line) for line in lines)
    assert first["service"] == "test-service" and first["level"] == "INFO" and first["logger"] == "moonbus.test"
    assert first["msg"] == "quote ' and \"double\" and a newline\nand unicode \u20ac: {'k': 'v'}"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]
