"""The JetStream state of moonbus (streams ORDERS and EXEC, the KV bucket `moonbus`, the
durable consumers of execution and risk) and how it is read.

    await provision(admin_nc, config)         # create or update all of it (user `admin` only)
    async for m in read_stream(nc, EXEC, subjects.ALL_REPORTS):   # by direct gets, no consumer
        ...
    kv = await open_kv(nc.jetstream())        # the KV bucket, for get/put of one's own keys

The state is data, `proto/nats/jetstream.json`, in the JetStream API's own JSON, read
by this module and by rust-common (streams.rs). Only the `admin` user may create or
change it (proto/nats/moonbus.conf, SECURITY.md): a user that may create a consumer can
make the server publish on any subject through a push consumer's deliver subject, and
one that may update a stream can do the same with `republish`. So services never create
consumers; they read streams with direct gets (`$JS.API.DIRECT.GET.<stream>`, batched),
and execution and risk pull from their own provisioned durables.

- ORDERS captures `orders.>` (orders.submit.<agent>.<symbol>, orders.cancel.<agent>.<symbol>).
  Each order is published with header `Nats-Msg-Id: <client_order_id>`, so a re-sent
  order within the 10-minute duplicate window is stored once (PubAck.duplicate).
- EXEC captures `exec.report.>` only, NOT `exec.>`: a stream that captured
  `exec.api.*` would store every API request and answer it with a PubAck, racing the
  real responder.
- ORDERS, EXEC and the KV bucket deny delete and purge (and so rollups): nothing stored
  can be erased through the API.
- Every stream is bounded (max_bytes, max_msg_size); moonbus.toml's `[jetstream.<STREAM>]`
  overrides them (`stream_limits`, validated; rust-common streams.rs reads them alike).
  ORDERS is discard new: full, it refuses new orders and keeps every stored one.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from services.contract.subjects import EXEC_STREAM, ORDERS_STREAM
from services.contract.subjects import KV_BUCKET as SUBJECTS_KV_BUCKET
from services.contract.subjects import KV_PROTECTIONS_BUCKET as SUBJECTS_KV_PROTECTIONS_BUCKET
from services.contract.subjects import KV_SENTIMENT_BUCKET as SUBJECTS_KV_SENTIMENT_BUCKET

log = logging.getLogger(__name__)

ORDERS = ORDERS_STREAM
EXEC = EXEC_STREAM
KV_BUCKET = SUBJECTS_KV_BUCKET
KV_STREAM = f"KV_{KV_BUCKET}"
KV_SENTIMENT_BUCKET = SUBJECTS_KV_SENTIMENT_BUCKET
KV_SENTIMENT_STREAM = f"KV_{KV_SENTIMENT_BUCKET}"
KV_PROTECTIONS_BUCKET = SUBJECTS_KV_PROTECTIONS_BUCKET
KV_PROTECTIONS_STREAM = f"KV_{KV_PROTECTIONS_BUCKET}"

# Header that carries the client_order_id for de-duplication.
MSG_ID_HEADER = "Nats-Msg-Id"

JETSTREAM_FILE = Path(__file__).resolve().parents[2] / "proto" / "nats" / "jetstream.json"

# nats-server error code: "stream not found" / "consumer not found".
_STREAM_NOT_FOUND = 10059


class StreamReadError(RuntimeError):
    """A stream could not be read (missing, not allowed, or the server stopped answering)."""


class ProvisionError(RuntimeError):
    """The JetStream state could not be created or updated."""


def jetstream_spec() -> dict[str, Any]:
    """proto/nats/jetstream.json: {"streams": [config...], "consumers": [{stream_name, config}...]}."""
    return json.loads(JETSTREAM_FILE.read_text())


# The stream settings moonbus.toml may override per stream (`[jetstream.<STREAM>]`).
STREAM_LIMITS = ("max_bytes", "max_msg_size")
# A message is never larger than the server's max_payload (proto/nats/moonbus.conf).
MAX_PAYLOAD = 1024 * 1024
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(value: Any, where: str) -> int:
    """A size in bytes: a positive integer, or a string such as "64KiB", "1GiB", "500MB"
    (KiB/MiB/GiB/TiB are powers of 1024, KB/MB/GB/TB of 1000). rust-common streams.rs
    `parse_size` reads the same forms."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProvisionError(f"{where}: {value!r} is not a size (an integer or e.g. \"1GiB\")")
    if isinstance(value, int):
        size = value
    else:
        text = value.strip()
        digits = len(text) - len(text.lstrip("0123456789"))
        number, unit = text[:digits], text[digits:].strip().lower() or "b"
        if not number or unit not in _UNITS:
            raise ProvisionError(f"{where}: {value!r} is not a size (e.g. 65536, \"64KiB\", \"1GiB\", \"500MB\")")
        size = int(number) * _UNITS[unit]
    if size <= 0 or size >= 2**63:
        raise ProvisionError(f"{where}: {value!r} must be more than 0 bytes (stores are bounded) and below 2^63")
    return size


# JetStream keeps at most 5 copies of a stream.
MAX_REPLICAS = 5


def _jetstream_section(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    section = (config or {}).get("jetstream", {})
    if not isinstance(section, Mapping):
        raise ProvisionError("[jetstream] must be a table of [jetstream.<STREAM>] tables")
    return section


def replicas(config: Mapping[str, Any] | None) -> int | None:
    """moonbus.toml's `[jetstream] replicas`: how many servers of a cluster keep each stream
    (1 to 5; 3 on a 3-node cluster, so one node may be lost), None = the spec's R1.
    rust-common streams.rs `replicas` reads it alike."""
    value = _jetstream_section(config).get("replicas")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise ProvisionError(f"[jetstream] replicas: {value!r} is not a number of copies from 1 to "
                             f"{MAX_REPLICAS} (3 on a 3-node cluster)")
    return value


def stream_limits(config: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """moonbus.toml's `[jetstream.<STREAM>]` max_bytes / max_msg_size, validated, by the
    spec's stream name (names match case-insensitively: MOONBUS__JETSTREAM__ORDERS__MAX_BYTES)."""
    section = _jetstream_section(config)
    names = {s["name"].lower(): s["name"] for s in jetstream_spec()["streams"]}
    limits: dict[str, dict[str, int]] = {}
    for key, table in section.items():
        if key == "replicas":
            continue
        name = names.get(str(key).lower())
        if name is None:
            raise ProvisionError(f"[jetstream.{key}]: no such stream (streams: {', '.join(names.values())})")
        if not isinstance(table, Mapping):
            raise ProvisionError(f"[jetstream.{key}] must be a table")
        unknown = sorted(set(table) - set(STREAM_LIMITS))
        if unknown:
            raise ProvisionError(f"[jetstream.{key}]: unknown setting {unknown[0]!r} "
                                 f"(settable: {', '.join(STREAM_LIMITS)})")
        limits[name] = {k: parse_size(v, f"[jetstream.{key}] {k}") for k, v in table.items()}
        if limits[name].get("max_msg_size", 0) > MAX_PAYLOAD:
            raise ProvisionError(f"[jetstream.{key}] max_msg_size must be at most the server's max_payload "
                                 f"({MAX_PAYLOAD} bytes)")
    return limits


def wanted_state(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec with the settings moonbus.toml owns applied: `[jetstream.<STREAM>]` limits,
    `[jetstream] replicas` (every stream's num_replicas; the consumers follow their stream),
    and execution's ack_wait_ms and max_in_flight become its consumer's ack_wait and
    max_ack_pending. Raises ProvisionError on a setting that makes no sense."""
    spec = copy.deepcopy(jetstream_spec())
    limits = stream_limits(config)
    copies = replicas(config)
    for stream in spec["streams"]:
        stream.update(limits.get(stream["name"], {}))
        if copies is not None:
            stream["num_replicas"] = copies
        if stream["max_msg_size"] > stream["max_bytes"]:
            raise ProvisionError(f"stream {stream['name']}: max_msg_size {stream['max_msg_size']} is larger "
                                 f"than max_bytes {stream['max_bytes']}")
    execution = dict((config or {}).get("execution", {}))
    for consumer in spec["consumers"]:
        if consumer["config"]["durable_name"] == "execution":
            if "ack_wait_ms" in execution:
                consumer["config"]["ack_wait"] = int(execution["ack_wait_ms"]) * 1_000_000
            if "max_in_flight" in execution:
                consumer["config"]["max_ack_pending"] = int(execution["max_in_flight"])
    return spec


# How long one INFO request waits for its answer before it is asked again (`_info`).
INFO_ATTEMPT_S = 5.0


async def _api(nc: Client, subject: str, body: Mapping[str, Any] | None, timeout: float) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode() if body is not None else b"", timeout=timeout)
    return json.loads(reply.data)


async def _info(nc: Client, subject: str, timeout: float, attempt: float = INFO_ATTEMPT_S) -> dict[str, Any]:
    """A STREAM/CONSUMER.INFO request, asked again while unanswered until `timeout`. A
    clustered asset without a leader at that moment (a stream just scaled up, its
    consumers being remapped) drops the request rather than answering it, so one long wait
    can miss the leader elected a second later (a CI run waited 30 s on CONSUMER.INFO after
    an R1 -> R3 update). INFO only reads: asking again is safe."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            return await _api(nc, subject, None, max(0.001, min(attempt, left)))
        except nats.errors.TimeoutError:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.info("%s: no answer within %gs, asking again", subject, attempt)


def _differs(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {live.get(k)!r} -> {v!r}" for k, v in wanted.items() if k != "$comment" and live.get(k) != v]


async def provision(nc: Client, config: Mapping[str, Any] | None = None, timeout: float = 30.0,
                    dry_run: bool = False) -> dict[str, list[str]]:
    """Create what is missing and update what differs (streams, then consumers), as the
    `admin` user. Settings not in the spec are kept. Idempotent; returns, per stream and
    consumer, the changes made ("created", or "field: old -> new"); dry_run: only says them.
    `timeout` per JetStream API call: scaling a stream to R3 waits for its new replicas,
    seconds on a busy machine (15 s expired once on a 2-core VM building beside it; a start
    would rather wait than fail).
    rust-common streams::provision follows the same rules (rust-risk/tests/provision.rs)."""
    spec = wanted_state(config)
    changes: dict[str, list[str]] = {}
    for wanted in spec["streams"]:
        name = wanted["name"]
        info = await _info(nc, f"$JS.API.STREAM.INFO.{name}", timeout)
        if "error" in info:
            if info["error"].get("err_code") != _STREAM_NOT_FOUND:
                raise ProvisionError(f"stream {name}: {info['error'].get('description')}")
            what = ["created"]
            made = {} if dry_run else await _api(nc, f"$JS.API.STREAM.CREATE.{name}", wanted, timeout)
        else:
            what = _differs(info["config"], wanted)
            if not what:
                continue
            stored = info.get("state", {}).get("bytes", 0)
            if wanted.get("discard") == "old" and wanted["max_bytes"] < stored:
                # The server would delete the oldest messages to fit: reports lost. (A discard
                # new stream keeps them and refuses new ones until it has room.)
                raise ProvisionError(f"stream {name}: max_bytes {wanted['max_bytes']} is below the {stored} bytes "
                                     "it stores; shrinking it would delete stored messages")
            made = {} if dry_run else await _api(nc, f"$JS.API.STREAM.UPDATE.{name}",
                                                 {**info["config"], **wanted}, timeout)
        if "error" in made:
            raise ProvisionError(f"stream {name}: {made['error'].get('description')}")
        changes[name] = what
        log.info("stream %s: %s", name, "; ".join(what))
    for consumer in spec["consumers"]:
        stream, wanted = consumer["stream_name"], consumer["config"]
        name = wanted["durable_name"]
        info = await _info(nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}", timeout)
        if "error" not in info:
            what = _differs(info["config"], wanted)
            if not what:
                continue
        else:
            what = ["created"]
        made = {} if dry_run else await _api(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                                             {"stream_name": stream, "config": wanted}, timeout)
        if "error" in made:
            raise ProvisionError(f"consumer {stream}/{name}: {made['error'].get('description')}")
        changes[f"{stream}/{name}"] = what
        log.info("consumer %s/%s: %s", stream, name, "; ".join(what))
    return changes


async def open_kv(js: JetStreamContext, bucket: str = KV_BUCKET) -> KeyValue:
    """The provisioned KV bucket (its gets are direct gets; puts are plain publishes)."""
    return await js.key_value(bucket)


# ------------------------------------------------------------------ reading by direct get


@dataclass
class Stored:
    """One stream message: its sequence, subject, the server's time of storing it (ns)."""

    seq: int
    subject: str
    stored_ns: int
    msg_id: str
    data: bytes


def _rfc3339_ns(text: str) -> int:
    """'2026-12-05T02:40:43.081942939Z' -> ns since the epoch (datetime keeps only µs)."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = int(datetime.fromisoformat(head + "+00:00").timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def _stored(msg: Msg) -> Stored:
    h = msg.headers or {}
    return Stored(
        seq=int(h["Nats-Sequence"]),
        subject=h.get("Nats-Subject", ""),
        stored_ns=_rfc3339_ns(h.get("Nats-Time-Stamp", "1970-01-01T00:00:00Z")),
        msg_id=h.get(MSG_ID_HEADER, ""),
        data=msg.data,
    )


async def read_stream(
    nc: Client,
    stream: str,
    subject: str,
    *,
    start_seq: int | None = None,
    start_ns: int | None = None,
    batch: int = 256,
    max_messages: int | None = None,
    timeout: float = 5.0,
) -> AsyncIterator[Stored]:
    """Every message of `stream` on `subject` from `start_seq` or `start_ns` (else the
    first) up to the last one stored now, oldest first, by batched direct gets: no
    consumer, nothing acked, nothing held back. Stops after `max_messages` if given.

    Use as `async with contextlib.aclosing(read_stream(...)) as messages:` when stopping early.
    """
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=queue.put)
    request: dict[str, Any] = {"batch": batch, "next_by_subj": subject}
    if start_seq is not None:
        request["seq"] = max(1, start_seq)
    elif start_ns is not None:
        seconds, ns = divmod(max(0, start_ns), 1_000_000_000)
        request["start_time"] = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"
    else:
        request["seq"] = 1
    # How many match when we start: a busy stream never keeps us reading.
    remaining: int | None = None
    read = 0
    try:
        while True:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            got = 0
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout)
                except asyncio.TimeoutError:
                    raise StreamReadError(f"stream {stream} did not answer a direct get within {timeout:g}s") from None
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "204":  # end of this batch
                    break
                if status == "404":  # nothing (more) on that subject
                    return
                if status:
                    description = headers.get("Description", "")
                    raise StreamReadError(f"cannot read stream {stream}: {status} {description}".rstrip())
                stored = _stored(msg)
                got += 1
                if remaining is None:
                    remaining = int(headers.get("Nats-Num-Pending", "0")) + 1
                yield stored
                read += 1
                remaining -= 1
                if remaining <= 0 or (max_messages is not None and read >= max_messages):
                    return
                request = {"batch": batch, "next_by_subj": subject, "seq": stored.seq + 1}
            if got == 0:
                return
    finally:
        await sub.unsubscribe()


def provision_sync(url: str, password: str, config: Mapping[str, Any] | None = None, dry_run: bool = False,
                   **connect: Any) -> dict[str, list[str]]:
    """`provision` as the `admin` user, from synchronous code (the launcher, test fixtures),
    in a thread of its own so that it works whether or not an event loop is running here."""
    import nats
    import threading

    from .bus import inbox_prefix, server_urls

    result: dict[str, Any] = {}

    async def run() -> None:
        nc = await nats.connect(server_urls(url), user="admin", password=password, inbox_prefix=inbox_prefix("admin"),
                                allow_reconnect=False, connect_timeout=5, **connect)
        try:
            result["changes"] = await provision(nc, config, dry_run=dry_run)
        finally:
            await nc.close()

    def thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as e:  # handed to the caller
            result["error"] = e

    worker = threading.Thread(target=thread, name="provision")
    worker.start()
    worker.join()
    if "error" in result:
        raise ProvisionError(f"provisioning JetStream at {url} failed: {result['error']}") from result["error"]
    return result["changes"]


def main() -> None:
    """`python -m services.common.streams [--check]`: provision as admin / NATS_PASSWORD at
    NATS_URL, with moonbus.toml (MOONBUS_CONFIG) and its overrides; what the compose
    `provision` one-shot runs. --check changes nothing and exits 3 if anything would change.
    Exit code 1, with the reason, if it cannot."""
    import os
    import sys

    from . import config
    from .tls import client_tls_options

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    options = client_tls_options(url, os.environ.get("NATS_CA"))
    check = "--check" in sys.argv[1:]
    try:
        changes = provision_sync(url, os.environ.get("NATS_PASSWORD", ""), config.load(), dry_run=check, **options)
    except (ProvisionError, OSError, ValueError) as e:
        print(f"provision: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    said = "; ".join(f"{k} {', '.join(v)}" for k, v in changes.items())
    print(f"provision{' --check' if check else ''}: " + (said or "nothing to change"))
    if check and changes:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
