"""The JetStream streams (and the KV bucket) of moonbus, created idempotently.

    js = nc.jetstream()
    await ensure_streams(js)                 # ORDERS and EXEC
    await ensure_streams(js, ["ORDERS"])     # only what this user may create
    kv = await ensure_kv(js)                 # KV bucket `moonbus`

The Rust side (rust-common, bus.rs) mirrors these settings; keep the two in step.

- ORDERS captures `orders.>` (orders.submit.<symbol>, orders.cancel.<symbol>). Each
  order is published with header `Nats-Msg-Id: <client_order_id>`, so a re-sent
  order within the 10-minute duplicate window is stored once (PubAck.duplicate).
- EXEC captures `exec.report.>` only, NOT `exec.>`: a stream that captured
  `exec.api.*` would store every API request and answer it with a PubAck, racing the
  real responder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

DAY = 24 * 3600.0

ORDERS = "ORDERS"
EXEC = "EXEC"
KV_BUCKET = "moonbus"

# Header that carries the client_order_id for de-duplication.
MSG_ID_HEADER = "Nats-Msg-Id"

STREAMS: dict[str, StreamConfig] = {
    ORDERS: StreamConfig(
        name=ORDERS,
        description="Order requests (orders.submit.<symbol>, orders.cancel.<symbol>); dedupe on Nats-Msg-Id = client_order_id",
        subjects=["orders.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=7 * DAY,
        duplicate_window=600.0,
        num_replicas=1,
    ),
    EXEC: StreamConfig(
        name=EXEC,
        description="Execution reports (exec.report.<symbol>)",
        subjects=["exec.report.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=30 * DAY,
        duplicate_window=600.0,
        num_replicas=1,
    ),
}

# The settings ensure_streams owns; any other field of a live stream is left alone.
_MANAGED = ("subjects", "retention", "storage", "discard", "max_age", "duplicate_window", "num_replicas")

# nats-server error code: "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058


def _differs(live: StreamConfig, wanted: StreamConfig) -> list[str]:
    diffs = []
    for field in _MANAGED:
        have, want = getattr(live, field), getattr(wanted, field)
        if field == "subjects":
            have, want = sorted(have or []), sorted(want or [])
        elif field in ("max_age", "duplicate_window"):
            have, want = round(float(have or 0), 3), round(float(want or 0), 3)
        if have != want:
            diffs.append(f"{field}: {have!r} -> {want!r}")
    return diffs


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> StreamInfo:
    """Create the stream, or update it when a managed setting differs. Idempotent."""
    name = wanted.name
    assert name
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            info = await js.add_stream(wanted)
            log.info("created stream %s on %s", name, ", ".join(wanted.subjects or []))
            return info
        except BadRequestError as e:  # created by someone else meanwhile, differently
            if e.err_code != _STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(name)
    diffs = _differs(info.config, wanted)
    if not diffs:
        return info
    # Update from the live config so settings we do not manage are kept.
    merged = info.config.evolve(**{f: getattr(wanted, f) for f in _MANAGED})
    info = await js.update_stream(merged)
    log.warning("updated stream %s: %s", name, "; ".join(diffs))
    return info


async def ensure_streams(js: JetStreamContext, names: Iterable[str] | None = None) -> dict[str, StreamInfo]:
    """Create or update ORDERS and EXEC (or only `names`). Safe to call on every start."""
    selected = list(names) if names is not None else list(STREAMS)
    unknown = [n for n in selected if n not in STREAMS]
    if unknown:
        raise ValueError(f"unknown stream(s) {unknown}; known: {list(STREAMS)}")
    return {name: await ensure_stream(js, STREAMS[name]) for name in selected}


async def ensure_kv(js: JetStreamContext, bucket: str = KV_BUCKET) -> KeyValue:
    """The KV bucket (latest sentiment, latest verdicts): opened, or created if missing.

    An existing bucket is used as it is (it may have been created by a Rust service
    with slightly different defaults); only users allowed to create it get here with
    a missing bucket (risk, sentiment-agent).
    """
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=bucket, history=1, storage=StorageType.FILE, direct=True)
    except BadRequestError as e:
        if e.err_code != _STREAM_NAME_IN_USE:
            raise
        return await js.key_value(bucket)
