"""services/common/bus.py `flush`: when it returns, the server has every SUB and PUB queued
before it. nats-py (2.16) writes flush()'s PING straight to the socket, ahead of what its
flusher task has not written yet, so the PONG of a plain flush() can come first: a
subscription "flushed" and then missing a message published right after (seen in this
suite: an agent's first bars and inputs now and then never arrived)."""

from __future__ import annotations

import asyncio

import nats

from services.common.bus import flush
from tests.conftest import connect_when_up


def record_writes(nc: nats.NATS) -> list[bytes]:
    """Every byte string `nc` writes to its socket, in order."""
    written: list[bytes] = []
    transport = nc._transport
    write, writelines = transport.write, transport.writelines

    def recorded_write(data: bytes) -> None:
        written.append(bytes(data))
        write(data)

    def recorded_writelines(lines) -> None:
        lines = list(lines)
        written.extend(bytes(line) for line in lines)
        writelines(lines)

    transport.write, transport.writelines = recorded_write, recorded_writelines
    return written


async def test_flush_writes_the_queued_subscriptions_before_its_ping(plain_nats: str) -> None:
    subscriber, publisher = await connect_when_up(plain_nats), await connect_when_up(plain_nats)
    try:
        written = record_writes(subscriber)
        got: list[str] = []

        async def on(msg) -> None:
            got.append(msg.subject)

        for i in range(20):
            await subscriber.subscribe(f"flush.{i}", cb=on)
            await flush(subscriber)
            last_ping = len(written) - 1 - written[::-1].index(b"PING\r\n")
            assert written.index(f"SUB flush.{i}  {i + 1}\r\n".encode()) < last_ping, written[-4:]
            await publisher.publish(f"flush.{i}", b"x")
            await publisher.flush()
        for _ in range(50):
            if len(got) == 20:
                break
            await asyncio.sleep(0.02)
        assert got == [f"flush.{i}" for i in range(20)]
    finally:
        await subscriber.close()
        await publisher.close()
