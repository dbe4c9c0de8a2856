"""Large orders as execution algorithms (`[trading_agent.algo]`, off by default).

Risk refuses an order whose notional is above `max_order_notional` (it is never split
there). With this section on, the agent sends such an order as a TWAP or ICEBERG parent
(`OrderRequest.algo`): rust-execution works it as children small enough to pass, each
checked by risk on its own (README "Execution algorithms").

The limit is `threshold_usd` when set, else the verdict's `max_order_notional`. Each
child is at most `child_fraction` of it (room for the price to move between the
decision and the child); a TWAP gets as many slices as that needs (2 .. 500), an
ICEBERG shows that much at a time.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Annotated, Literal

from pydantic import Field

from services.common.config import ConfigMoney, Section
from services.contract.models import (
    TWAP_MAX_DURATION_MS,
    TWAP_MAX_SLICES,
    TWAP_MIN_DURATION_MS,
    TWAP_MIN_SLICES,
    AlgoKind,
    ExecAlgo,
)

from .sizing import round_down


class AlgoConfig(Section):
    """`[trading_agent.algo]` (keys documented in moonbus.toml)."""

    enabled: bool = False
    kind: Literal["TWAP", "ICEBERG"] = "TWAP"
    threshold_usd: Annotated[ConfigMoney, Field(ge=0)] = Decimal(0)  # 0 = the verdict's max_order_notional
    child_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8  # of the limit, per child
    duration_ms: Annotated[int, Field(ge=TWAP_MIN_DURATION_MS, le=TWAP_MAX_DURATION_MS)] = 60_000  # TWAP


def algo_for(quantity: Decimal, price: Decimal, max_order_notional: Decimal | None,
             cfg: AlgoConfig, step: Decimal) -> tuple[ExecAlgo | None, str]:
    """The algo to send `quantity` with (None: send it whole), and a note for the reasoning."""
    if not cfg.enabled or price <= 0:
        return None, ""
    limit = cfg.threshold_usd if cfg.threshold_usd > 0 else max_order_notional
    if limit is None or limit <= 0:
        return None, ""
    notional = quantity * price
    if notional <= limit:
        return None, ""
    child_usd = limit * Decimal(str(cfg.child_fraction))
    if cfg.kind == "ICEBERG":
        display = round_down(child_usd / price, step)
        if display <= 0 or display >= quantity:
            return None, ""
        return (ExecAlgo(kind=AlgoKind.ICEBERG, display_quantity=display),
                f" as an ICEBERG of {display} at a time (notional {notional:.2f} > {limit})")
    slices = int((notional / child_usd).to_integral_value(rounding=ROUND_CEILING))
    slices = max(TWAP_MIN_SLICES, min(TWAP_MAX_SLICES, slices))
    return (ExecAlgo(kind=AlgoKind.TWAP, duration_ms=cfg.duration_ms, slices=slices),
            f" as a TWAP of {slices} slices over {cfg.duration_ms} ms (notional {notional:.2f} > {limit})")
