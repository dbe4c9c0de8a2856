"""The trading agent's `[trading_agent.algo]` (services/trading_agent/algo.py): an order over
the order limit goes as a TWAP / ICEBERG parent instead of being refused whole."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from services.contract.models import (
    AccountState,
    Action,
    AlgoKind,
    OrderRequest,
    TradingState,
    Verdict,
    decode,
    encode,
    now_ns,
)
from services.trading_agent.agent import Choice, Context, Event, plan
from services.trading_agent.algo import AlgoConfig, algo_for
from services.trading_agent.config import TradingConfig

STEP = D("0.000001")


def test_off_by_default_and_only_over_the_limit() -> None:
    assert TradingConfig().algo.enabled is False
    assert algo_for(D("1"), D("97000"), D("1000"), AlgoConfig(), STEP) == (None, "")
    on = AlgoConfig(enabled=True)
    assert algo_for(D("0.01"), D("97000"), D("1000"), on, STEP) == (None, "")  # 970 <= 1000
    assert algo_for(D("1"), D("97000"), None, on, STEP) == (None, "")  # no limit known


def test_a_twap_gets_enough_slices_for_each_to_pass() -> None:
    algo, note = algo_for(D("0.1"), D("97000"), D("1000"), AlgoConfig(enabled=True, duration_ms=30_000), STEP)
    assert algo is not None and algo.kind is AlgoKind.TWAP
    # 9700 USD in children of at most 800 USD: 13 slices (746.15 each)
    assert (algo.slices, algo.duration_ms) == (13, 30_000)
    assert D("0.1") * D("97000") / algo.slices <= D("800")
    assert "TWAP of 13 slices" in note
    # bounded by the contract: 2 .. 500
    algo, _ = algo_for(D("1000"), D("97000"), D("1000"), AlgoConfig(enabled=True), STEP)
    assert algo is not None and algo.slices == 500
    # the configured threshold wins over the verdict's
    algo, _ = algo_for(D("0.01"), D("97000"), D("1000"), AlgoConfig(enabled=True, threshold_usd=D("500")), STEP)
    assert algo is not None and algo.slices == 3


def test_an_iceberg_shows_a_child_within_the_limit() -> None:
    cfg = AlgoConfig(enabled=True, kind="ICEBERG", child_fraction=0.5)
    algo, note = algo_for(D("0.1"), D("97000"), D("1000"), cfg, STEP)
    assert algo is not None and algo.kind is AlgoKind.ICEBERG
    assert algo.display_quantity == D("0.005154")  # 500 / 97000 rounded down to the step
    assert "ICEBERG of 0.005154" in note


@pytest.mark.parametrize("kind", ["TWAP", "ICEBERG"])
def test_plan_sends_a_large_buy_as_an_algo_parent(kind: str) -> None:
    ts = now_ns()
    cfg = TradingConfig(order_usd=D("5000"), max_position_pct=100.0, cash_pct=0.0,
                        algo=AlgoConfig(enabled=True, kind=kind))
    v = Verdict(symbol="BTC-USD", state=TradingState.ACTIVE, max_order_notional=D("1000"), ts=ts)
    a = AccountState(state=TradingState.ACTIVE, cash=D("100000"), equity=D("100000"), peak_equity=D("100000"),
                     drawdown_pct=0.0, realized_pnl=D(0), unrealized_pnl=D(0), day_pnl=D(0), fees=D(0),
                     gross_exposure=D(0), open_positions=0, kill_switch=False, ts=ts)
    ctx = Context(event=Event("bar", "BTC-USD", "sim", D("97000"), ts, "1s bar closed"), bars=[], verdict=v, account=a)
    proposal = plan(Choice(Action.BUY, 0.9, "because", "momentum"), ctx, cfg, ts)
    order = proposal.order
    assert order is not None and order.algo is not None and order.algo.kind.value == kind
    assert order.quantity == D("0.051546")
    assert f"as a{'n' if kind == 'ICEBERG' else ''} {kind}" in proposal.signal.reasoning
    assert decode(OrderRequest, encode(order)) == order
    # Off: the same order goes whole (and risk refuses it).
    cfg_off = cfg.model_copy(update={"algo": AlgoConfig()})
    whole = plan(Choice(Action.BUY, 0.9, "because", "momentum"), ctx, cfg_off, ts).order
    assert whole is not None and whole.algo is None and whole.quantity == order.quantity
