"""Risk agent: the account rules (a gain never trips the loss rule), the latch, the
closing orders, and the agent in-process against the real nats-server."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal

import pytest

from services.common.models import (
    AccountState,
    Action,
    OrderRequest,
    OrderType,
    Position,
    PositionsReply,
    Side,
    Signal,
    TradingState,
    decode,
    encode,
    now_ns,
)
from services.risk_agent import service
from services.risk_agent.config import RiskAgentConfig
from services.risk_agent.rules import Breach, Latch, check_account, close_orders

D = Decimal
CFG = RiskAgentConfig(max_loss_usd=D("300"), max_gain_usd=D("1000"), min_balance_usd=D("100"))


def account(day_pnl: str = "0", equity: str = "10000") -> AccountState:
    return AccountState(
        state=TradingState.ACTIVE, cash=D(equity), equity=D(equity), peak_equity=D(equity), drawdown_pct=0.0,
        realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(day_pnl), fees=D(0), gross_exposure=D(0),
        open_positions=0, kill_switch=False, ts=now_ns(),
    )


def position(symbol: str, quantity: str, mark: str | None = "100") -> Position:
    return Position(
        symbol=symbol, quantity=D(quantity), avg_price=D("100"), mark_price=D(mark) if mark else None,
        realized_pnl=D(0), unrealized_pnl=D(0), fees=D(0), notional=abs(D(quantity)) * D("100"),
    )


def rules(acc: AccountState) -> list[str]:
    return [b.rule for b in check_account(acc, CFG)]


# ---------------------------------------------------------------- rules


def test_loss_rule_trips_on_a_loss_only() -> None:
    assert rules(account("-299.99")) == []
    assert rules(account("-300")) == ["max_loss"]
    assert rules(account("-1000000")) == ["max_loss"]
    # A gain must never trip the loss rule, however large.
    assert "max_loss" not in rules(account("300"))
    assert "max_loss" not in rules(account("5000"))


def test_gain_rule_trips_on_a_gain_only() -> None:
    assert rules(account("999.99")) == []
    assert rules(account("1000")) == ["max_gain"]
    assert "max_gain" not in rules(account("-1000"))


def test_min_balance_rule() -> None:
    assert rules(account(equity="100")) == []
    assert rules(account(equity="99.99")) == ["min_balance"]
    assert rules(account("-9950", equity="50")) == ["max_loss", "min_balance"]


def test_breach_reason_has_the_numbers() -> None:
    (breach,) = check_account(account("-412.5"), CFG)
    assert breach.reason == "day PnL -412.5 <= -300 (max_loss_usd)"


def test_latch_acts_once_per_breach_until_it_clears() -> None:
    latch = Latch()
    loss = Breach("max_loss", "x")
    assert latch.update([loss]) == [loss]
    assert latch.update([loss]) == []  # still breached: no second flatten
    assert latch.update([loss, Breach("min_balance", "y")]) == [Breach("min_balance", "y")]
    assert latch.update([]) == []  # cleared
    assert latch.update([loss]) == [loss]  # breached again: acts again
    latch.release(["max_loss"])  # the action failed: try again next time
    assert latch.update([loss]) == [loss]


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RiskAgentConfig(max_loss_usd=D("-300"))
    with pytest.raises(ValueError, match="decimal string"):
        RiskAgentConfig(max_gain_usd=1000.0)  # money as a float


def test_close_orders_flatten_longs_and_shorts_reduce_only() -> None:
    positions = [position("BTC-USD", "0.01"), position("ETH-USD", "-0.5", mark=None), position("SOL-USDC", "0")]
    out = close_orders(positions, "day PnL -400 <= -300 (max_loss_usd)", "sim", origin_ts=5, ts=6)
    assert [(o.symbol, o.side, o.quantity) for _, o in out] == [
        ("BTC-USD", Side.SELL, D("0.01")),
        ("ETH-USD", Side.BUY, D("0.5")),
    ]
    for signal, order in out:
        assert re.fullmatch(r"rsk-[0-9a-f]{20}", order.client_order_id)
        assert (order.agent, order.type, order.reduce_only, order.origin_ts) == ("risk", OrderType.MARKET, True, 5)
        assert signal.reasoning.startswith("day PnL -400 <= -300 (max_loss_usd); closing")
        assert signal.action is Action(order.side.value) and signal.agent == "risk"
        decode(OrderRequest, encode(order))
    assert out[0][1].decision_price == D("100") and out[1][1].decision_price is None


# ---------------------------------------------------------------- in-process, real nats-server

CONFIG = {"risk_agent": {"max_loss_usd": "300", "max_gain_usd": "1000", "min_balance_usd": "100"}}


async def drain(queue: asyncio.Queue, n: int, timeout: float = 5.0) -> list:
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(n)]


async def test_breach_flattens_every_position_once(connect, running_service) -> None:
    operator, risk = await connect("operator"), await connect("risk")
    requests: list[dict] = []

    async def positions_api(msg) -> None:  # a fake rust-risk
        requests.append(json.loads(msg.data))
        reply = PositionsReply(
            positions=[position("RSKA-USD", "0.01"), position("RSKB-USD", "-0.5"), position("RSKC-USD", "0")],
            account=account("-400"),
        )
        await msg.respond(encode(reply))

    sub = await risk.subscribe("risk.api.positions", cb=positions_api)
    orders = await operator.collect("orders.submit.>")
    signals = await operator.collect("agent.signal.risk.>")
    try:
        async with running_service("risk-agent", service.main, CONFIG, operator):
            await risk.publish("risk.account", encode(account("-400")))
            got = [decode(OrderRequest, m.data) for m in await drain(orders, 2)]
            sigs = [decode(Signal, m.data) for m in await drain(signals, 2)]

            # The heartbeat repeats the breached state: nothing more happens.
            await risk.publish("risk.account", encode(account("-420")))
            await risk.flush()
            await asyncio.sleep(0.3)
            assert orders.empty() and len(requests) == 1

            # Cleared, then breached again (a gain this time): flattens again.
            await risk.publish("risk.account", encode(account("0")))
            await risk.publish("risk.account", encode(account("1500")))
            again = [decode(OrderRequest, m.data) for m in await drain(orders, 2)]
            await drain(signals, 2)
    finally:
        await sub.unsubscribe()

    assert requests[0] == {}  # all positions
    assert sorted((o.symbol, o.side, o.quantity) for o in got) == [
        ("RSKA-USD", Side.SELL, D("0.01")),
        ("RSKB-USD", Side.BUY, D("0.5")),
    ]
    assert all(o.reduce_only and o.agent == "risk" and o.client_order_id.startswith("rsk-") for o in got)
    assert all(s.reasoning.startswith("day PnL -400 <= -300 (max_loss_usd)") for s in sigs)
    assert {o.client_order_id for o in again}.isdisjoint(o.client_order_id for o in got)


async def test_positions_unavailable_is_reported_and_retried(connect, running_service) -> None:
    operator, risk = await connect("operator"), await connect("risk")
    errors = await operator.collect("errors.risk-agent")
    async with running_service("risk-agent", service.main, CONFIG, operator):
        # Nobody serves risk.api.positions: the flatten fails, is reported, and the
        # latch is released so the next account update tries again.
        await risk.publish("risk.account", encode(account("-400")))
        first = await asyncio.wait_for(errors.get(), 5)
        await risk.publish("risk.account", encode(account("-400")))
        second = await asyncio.wait_for(errors.get(), 5)
    for m in (first, second):
        event = json.loads(m.data)
        assert event["service"] == "risk-agent" and "no_responders" in event["reason"]
