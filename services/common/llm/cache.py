"""Record/replay of LLM decisions, keyed by agent + model + sha256(system + prompt).

One human-readable JSON file per entry (the question and the answer), so a run can be
replayed without any live call and audited afterwards. Replay never calls the model: a
missing entry is an ABSTAIN with the file it looked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Literal

from .decision import Decision, DecisionRequest

log = logging.getLogger("moonbus.llm")
Mode = Literal["off", "record", "replay"]


def prompt_hash(request: DecisionRequest) -> str:
    return hashlib.sha256(json.dumps([request.system, request.prompt]).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


class DecisionCache:
    def __init__(self, mode: Mode, directory: str | Path) -> None:
        self.mode = mode
        self.directory = Path(directory)

    def path(self, request: DecisionRequest, model: str) -> Path:
        return self.directory / f"{_slug(request.agent)}__{_slug(model)}__{prompt_hash(request)[:24]}.json"

    async def load(self, request: DecisionRequest, model: str) -> Decision | str:
        """The recorded decision, or why there is none."""
        path = self.path(request, model)
        try:
            entry = json.loads(await asyncio.to_thread(path.read_text))
            if (entry["agent"], entry["model"], entry["system"], entry["prompt"]) != (
                    request.agent, model, request.system, request.prompt):
                return f"replay: {path} was recorded for another question"
            return Decision.model_validate(entry["decision"])
        except FileNotFoundError:
            return f"replay: no recorded answer in {path}"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"replay: unreadable entry {path}: {e}"

    async def save(self, request: DecisionRequest, model: str, decision: Decision) -> None:
        entry = {
            "agent": request.agent, "model": model, "symbol": request.symbol,
            "prompt_sha256": prompt_hash(request), "recorded_at_ns": time.time_ns(),
            "system": request.system, "prompt": request.prompt, "decision": decision.model_dump(mode="json"),
        }
        path = self.path(request, model)
        try:
            await asyncio.to_thread(self._write, path, json.dumps(entry, indent=2) + "\n")
        except OSError as e:  # the decision still stands; the recording is what is lost
            log.error("LLM cache: could not record %s: %s", path, e)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        # Write then rename, so a crash never leaves a half-written entry to replay.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
