"""Every running service, through the NATS service API ($SRV.INFO and $SRV.STATS).

    services = await discover(nc)            # {"risk": Service(...), ...}
    services["risk"].instances[0].requests   # requests served by one instance

Each instance of each service answers the one request, so the answers are collected
until `wait` seconds have passed or nobody has answered for `quiet` seconds.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.aio.client import Client


@dataclass
class Instance:
    id: str
    version: str
    started_ns: int | None = None
    requests: int = 0
    errors: int = 0
    last_error: str = ""
    endpoints: list[str] = field(default_factory=list)


@dataclass
class Service:
    name: str
    description: str = ""
    instances: list[Instance] = field(default_factory=list)

    @property
    def versions(self) -> list[str]:
        return sorted({i.version for i in self.instances})

    @property
    def requests(self) -> int:
        return sum(i.requests for i in self.instances)

    @property
    def errors(self) -> int:
        return sum(i.errors for i in self.instances)

    @property
    def last_error(self) -> str:
        return next((i.last_error for i in self.instances if i.last_error), "")

    @property
    def started_ns(self) -> int | None:
        """When the oldest instance started."""
        known = [i.started_ns for i in self.instances if i.started_ns is not None]
        return min(known) if known else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "versions": self.versions,
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
            "started_ns": self.started_ns,
            "instances": [vars(i) for i in self.instances],
        }


RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)")


def parse_time_ns(text: str) -> int | None:
    """RFC 3339 with up to nanoseconds (`2024-05-01T10:00:00.123456789Z`) -> ns since the epoch."""
    found = RFC3339.fullmatch(text)
    if found is None:
        return None
    whole, fraction, zone = found.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    seconds = int(datetime.fromisoformat(whole + zone).timestamp())
    return seconds * 1_000_000_000 + int(((fraction or "") + "000000000")[:9])


async def collect(nc: Client, subject: str, wait: float = 1.0, quiet: float = 0.25) -> list[dict[str, Any]]:
    """Publish an empty request on `subject`; every JSON answer within the time limits."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_reply(msg: Any) -> None:
        await replies.put(msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    answers: list[dict[str, Any]] = []
    try:
        await nc.publish(subject, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(replies.get(), min(left, quiet) if answers else left)
            except asyncio.TimeoutError:
                break
            try:
                answers.append(json.loads(data))
            except ValueError:
                continue  # not a service API answer
    finally:
        await sub.unsubscribe()
    return answers


async def discover(nc: Client, wait: float = 1.0, quiet: float = 0.25) -> dict[str, Service]:
    """Every service that answers $SRV.INFO, with the request counts of $SRV.STATS. Any
    user may answer those (every service subscribes $SRV.*): an answer of another shape
    (a name or id that is not a string, endpoints that are not objects, counts that are not
    numbers, a bad `started`) is left out."""
    infos, stats = await asyncio.gather(
        collect(nc, "$SRV.INFO", wait, quiet), collect(nc, "$SRV.STATS", wait, quiet)
    )
    services: dict[str, Service] = {}
    instances: dict[str, Instance] = {}
    for info in infos:
        try:
            name, instance_id = _text(info, "name"), _text(info, "id")
            endpoints = [str(e.get("subject", "")) for e in info.get("endpoints") or []]
        except MALFORMED:
            continue
        service = services.setdefault(name, Service(name, info.get("description") or ""))
        instance = Instance(id=instance_id, version=str(info.get("version", "")), endpoints=endpoints)
        service.instances.append(instance)
        instances[instance.id] = instance
    for stat in stats:
        try:
            instance_id = _text(stat, "id")
            name = _text(stat, "name") if "name" in stat else "?"
            started_ns = parse_time_ns(stat.get("started") or "")
            counts = [(int(e.get("num_requests") or 0), int(e.get("num_errors") or 0), str(e.get("last_error") or ""))
                      for e in stat.get("endpoints") or []]
        except MALFORMED:
            continue
        instance = instances.get(instance_id)
        if instance is None:  # started between the two requests: count it anyway
            service = services.setdefault(name, Service(name))
            instance = Instance(id=instance_id, version=str(stat.get("version", "")))
            service.instances.append(instance)
            instances[instance.id] = instance
        instance.started_ns = started_ns
        for requests, errors, last_error in counts:
            instance.requests += requests
            instance.errors += errors
            instance.last_error = last_error or instance.last_error
    return dict(sorted(services.items()))


# What a malformed answer raises while it is read (a list where an object belongs, "many"
# or Infinity for a count, a time that is no time).
MALFORMED = (AttributeError, TypeError, ValueError, OverflowError)


def _text(answer: Any, key: str) -> str:
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value
