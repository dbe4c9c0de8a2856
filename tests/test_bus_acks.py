"""Bus.publish_order's wait for the ORDERS stream's answer (services/common/bus.py
`_publish_to_stream`), against a stand-in stream on a plain nats-server."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import nats
import nats.errors
import pytest

from services.common.bus import Bus, flush
from services.contract.models import OrderRequest, Side
from tests.conftest import connect_when_up


async def test_an_order_ack_that_never_comes_is_a_timeout_and_a_late_one_is_dropped(plain_nats: str) -> None:
    """Bus.publish_order waits for the stream's answer on its own reply subscription, with one
    timer: answered, the PubAck; unanswered, nats' TimeoutError after `timeout` (not before),
    and its waiter is gone, so an answer that comes later is dropped. A stand-in stream on a
    plain nats-server answers only the orders of BTC-USD."""
    stand_in = await connect_when_up(plain_nats)
    unanswered: list[str] = []

    async def stream(msg: Any) -> None:
        if msg.subject.endswith(".BTC-USD"):
            await msg.respond(b'{"stream": "ORDERS", "seq": 7}')
        else:
            unanswered.append(msg.reply)

    await stand_in.subscribe("orders.submit.>", cb=stream)
    await flush(stand_in)
    bus = Bus("test")
    await bus.connect(plain_nats)
    order = OrderRequest(client_order_id="trd-ack", agent="trading", symbol="BTC-USD", side=Side.BUY,
                         quantity=Decimal("0.01"), origin_ts=1, ts=2)
    ack = await bus.publish_order("orders.submit.trading.BTC-USD", order, timeout=2, fresh=True)
    assert (ack.stream, ack.seq) == ("ORDERS", 7)
    late = order.model_copy(update={"symbol": "ETH-USD"})
    started = time.monotonic()
    with pytest.raises(nats.errors.TimeoutError):
        await bus.publish_order("orders.submit.trading.ETH-USD", late, timeout=0.4)
    assert 0.35 <= time.monotonic() - started < 3
    assert len(unanswered) == 1 and not bus._acks[1]  # no waiter left behind
    await stand_in.publish(unanswered[0], b'{"stream": "ORDERS", "seq": 8}')  # the late answer: dropped
    await flush(stand_in)
    ack = await bus.publish_order("orders.submit.trading.BTC-USD", order, timeout=2)
    assert ack.seq == 7
    await bus.close()
    await stand_in.close()
