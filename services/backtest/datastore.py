"""Backtest datasets in the JetStream object store `backtest-data`, named by the sha256 of
their bytes, so that any worker on any machine reads the same file.

    ref = await upload(nc, Path("bars.csv"))          # once per content (operator)
    data = await fetch(nc, ref.name, ref.sha256)       # a worker: checked bytes

The layout is nats' own object store (chunks on `$O.<bucket>.C.<nuid>`, the ObjectInfo
JSON on `$O.<bucket>.M.<base64url(name)>`), so `nats object ls backtest-data` lists them.
nats-py's ObjectStore is not used: its `get` makes a consumer (no service may: SECURITY.md)
and its `put` sends rollups and purges (the stream allows neither). Here the reads are
direct gets, the writes plain JetStream publishes, and an object is never replaced: a name
is its content's hash, so what is stored under it is either right or detected as forged.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from services.common.streams import StreamReadError, read_stream
from services.contract import subjects as S

BUCKET = S.BACKTEST_DATA_BUCKET
STREAM = f"OBJ_{BUCKET}"
CHUNK_SIZE = 128 * 1024  # nats' default object chunk


class DatasetError(RuntimeError):
    """A dataset is missing, cannot be read, or its bytes are not the ones asked for.
    `code`: `dataset_missing` or `dataset_corrupt` (a BacktestReply error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DatasetRef:
    """What a BacktestRequest names: the object, its sha256 and the original file name."""

    name: str
    sha256: str
    filename: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_subject(name: str) -> str:
    return S.object_meta(BUCKET, base64.urlsafe_b64encode(name.encode()).decode())


async def _meta(nc: Client, name: str, timeout: float) -> dict | None:
    """The object's ObjectInfo JSON (the last meta stored), None if there is none."""
    subject = _meta_subject(name)
    try:
        msg = await nc.request(f"$JS.API.DIRECT.GET.{STREAM}.{subject}", b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        raise DatasetError("dataset_missing", f"object store {BUCKET} is not provisioned") from None
    except nats.errors.TimeoutError:
        raise DatasetError("dataset_missing", f"object store {BUCKET} did not answer within {timeout:g}s") from None
    status = (msg.headers or {}).get("Status")
    if status == "404":
        return None
    if status:
        raise DatasetError("dataset_missing", f"cannot read {BUCKET}: {status} {(msg.headers or {}).get('Description', '')}")
    try:
        meta = json.loads(msg.data)
    except ValueError:
        raise DatasetError("dataset_corrupt", f"object {name}: its meta is not JSON") from None
    return None if meta.get("deleted") else meta


async def upload(nc: Client, path: Path, *, timeout: float = 10.0) -> DatasetRef:
    """Store `path` under the sha256 of its bytes, unless an object of that name with the
    same digest is there already (uploaded by anyone, any time within the bucket's max age)."""
    data = Path(path).read_bytes()
    digest = sha256_hex(data)
    ref = DatasetRef(digest, digest, Path(path).name, len(data))
    meta = await _meta(nc, digest, timeout)
    if meta is not None and meta.get("digest") == _nats_digest(data) and meta.get("size") == len(data):
        return ref
    js = nc.jetstream(timeout=timeout)
    nuid = nc._nuid.next().decode()  # the chunks' own subject, as nats' object store does
    chunks = 0
    for start in range(0, len(data), CHUNK_SIZE):
        await js.publish(S.object_chunks(BUCKET, nuid), data[start:start + CHUNK_SIZE])
        chunks += 1
    info = {"name": digest, "bucket": BUCKET, "nuid": nuid, "size": len(data), "chunks": chunks,
            "mtime": datetime.now(timezone.utc).isoformat(), "digest": _nats_digest(data),
            "description": Path(path).name, "options": {"max_chunk_size": CHUNK_SIZE}}
    await js.publish(_meta_subject(digest), json.dumps(info).encode())
    return ref


def _nats_digest(data: bytes) -> str:
    """The digest form of nats' ObjectInfo: `SHA-256=<base64url>`."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


async def fetch(nc: Client, name: str, sha256: str, *, timeout: float = 10.0) -> bytes:
    """The bytes of object `name`, read by direct gets; DatasetError unless they hash to `sha256`."""
    meta = await _meta(nc, name, timeout)
    if meta is None:
        raise DatasetError("dataset_missing", f"no object {name} in {BUCKET} (upload it first; objects "
                                              "age out after 7 days)")
    nuid, size = meta.get("nuid"), meta.get("size")
    if not isinstance(nuid, str) or not nuid or not isinstance(size, int):
        raise DatasetError("dataset_corrupt", f"object {name}: meta without nuid or size")
    parts: list[bytes] = []
    try:
        if size:
            async for stored in read_stream(nc, STREAM, S.object_chunks(BUCKET, nuid), timeout=timeout):
                parts.append(stored.data)
    except StreamReadError as e:
        raise DatasetError("dataset_missing", f"object {name}: {e}") from None
    data = b"".join(parts)
    got = sha256_hex(data)
    if got != sha256 or len(data) != size:
        raise DatasetError("dataset_corrupt", f"object {name}: {len(data)} bytes with sha256 {got}, "
                                              f"not the requested {sha256}")
    return data
