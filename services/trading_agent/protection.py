"""`[trading_agent.protection]` (off by default): a stop-loss, a take-profit and/or a trailing
stop attached to every risk-increasing entry (`OrderRequest.protection`), carried out by
rust-execution (rust-execution/src/protect.rs) as reduce-only exits once the entry fills.

Trigger prices are relative to the order's decision price, in exact decimals: for a BUY (a
long) the stop lies `stop_loss_pct` % below and the take-profit `take_profit_pct` % above;
for a SELL that opens or grows a short, the other way round. A reduce-only order gets none.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, model_validator

from services.common.config import ConfigMoney, Section
from services.contract.models import OrderRequest, Protection, Side

HUNDRED = Decimal(100)


class ProtectionConfig(Section):
    """`[trading_agent.protection]` (keys documented in moonbus.toml)."""

    enabled: bool = False
    stop_loss_pct: Annotated[ConfigMoney, Field(gt=0, lt=100)] | None = None
    take_profit_pct: Annotated[ConfigMoney, Field(gt=0, lt=100)] | None = None
    trailing_stop_bps: Annotated[int, Field(ge=1, le=5000)] | None = None

    @model_validator(mode="after")
    def _something_when_enabled(self) -> ProtectionConfig:
        if self.enabled and self.stop_loss_pct is None and self.take_profit_pct is None \
                and self.trailing_stop_bps is None:
            raise ValueError("[trading_agent.protection] enabled needs stop_loss_pct, take_profit_pct "
                             "or trailing_stop_bps")
        return self


def _offset(price: Decimal, pct: Decimal, up: bool) -> Decimal:
    """price x (100 +/- pct) / 100, exact (a division by 100 never rounds)."""
    factor = HUNDRED + pct if up else HUNDRED - pct
    return (price * factor / HUNDRED).normalize()


def protection_for(side: Side, price: Decimal, cfg: ProtectionConfig) -> Protection | None:
    """The protection of an entry on `side` decided at `price` (None when off)."""
    if not cfg.enabled:
        return None
    long = side is Side.BUY
    stop = None if cfg.stop_loss_pct is None else _offset(price, cfg.stop_loss_pct, up=not long)
    take = None if cfg.take_profit_pct is None else _offset(price, cfg.take_profit_pct, up=long)
    return Protection(stop_loss=stop, take_profit=take, trailing_stop_bps=cfg.trailing_stop_bps)


def attach(order: OrderRequest | None, cfg: ProtectionConfig) -> OrderRequest | None:
    """The order with its protection: risk-increasing entries only (not reduce_only), and only
    with a decision price to measure from; an algo parent gets none (the contract refuses
    both on one order: its fills are its children's)."""
    if order is None or order.reduce_only or order.algo is not None or order.decision_price is None:
        return order
    protection = protection_for(order.side, order.decision_price, cfg)
    if protection is None:
        return order
    return order.model_copy(update={"protection": protection})
