"""Order sizes, in exact Decimal arithmetic.

Two modes ([trading_agent] `sizing`):
- "fixed_usd" (default): the original's USD_SIZE, MAX_POSITION_PERCENTAGE and
  CASH_PERCENTAGE: `order_usd` worth per order, capped by the position and cash limits;
  a reducing order sells up to `order_usd` worth;
- "all_in": a BUY spends all the cash above the `cash_pct` reserve, net of the fee
  (`fee_bps`), as backtesting.py's default `buy()` does (size 0.9999 = cash_pct 0.01);
  a reducing order closes the whole position.

Shorts (`allow_short`): a sell-to-open is sized by the same rules, with the margin that
is free (equity less the gross exposure, the short's "cash") in place of the cash:
- "fixed_usd": `order_usd` worth, capped so that the short's notional stays within
  max_position_pct of equity and the free margin left stays >= cash_pct of equity;
- "all_in": all the free margin above the cash_pct reserve, net of the fee, as
  backtesting.py's `sell()` (its margin_available // (price + commission)). On a flat
  account equity less exposure is the cash, so a short is the size a long would be.

Quantities are rounded DOWN to `quantity_step` (0.000001 by default; 1 = whole units),
so rounding can never make an order bigger than its limits; a size that rounds to zero
means "no order".
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

QUANTITY_STEP = Decimal("0.000001")


def round_down(quantity: Decimal, step: Decimal = QUANTITY_STEP) -> Decimal:
    if quantity <= 0:
        return Decimal(0)
    if step == QUANTITY_STEP:
        return quantity.quantize(QUANTITY_STEP, rounding=ROUND_DOWN)
    return (quantity // step) * step


def _pct(value: Decimal, pct: float) -> Decimal:
    return value * Decimal(str(pct)) / 100


def buy_quantity(
    price: Decimal,
    position: Decimal,
    equity: Decimal,
    cash: Decimal,
    order_usd: Decimal,
    max_position_pct: float,
    cash_pct: float,
    step: Decimal = QUANTITY_STEP,
) -> Decimal:
    """order_usd worth, capped so that the long position's notional stays within
    max_position_pct of equity and the cash left stays >= cash_pct of equity."""
    position_room = _pct(equity, max_position_pct) - max(position, Decimal(0)) * price
    cash_room = cash - _pct(equity, cash_pct)
    notional = min(order_usd, position_room, cash_room)
    if notional <= 0:
        return Decimal(0)
    return round_down(notional / price, step)


def all_in_quantity(
    price: Decimal, equity: Decimal, cash: Decimal, cash_pct: float, fee_bps: Decimal,
    step: Decimal = QUANTITY_STEP,
) -> Decimal:
    """All the cash above the cash_pct reserve, with room for the fee at fee_bps."""
    budget = cash - _pct(equity, cash_pct)
    if budget <= 0:
        return Decimal(0)
    return round_down(budget / (price * (1 + fee_bps / 10_000)), step)


def reduce_quantity(price: Decimal, position: Decimal, order_usd: Decimal,
                    step: Decimal = QUANTITY_STEP) -> Decimal:
    """Reduce a position (long or short) by up to order_usd worth, never past zero."""
    return round_down(min(abs(position), order_usd / price), step)


def free_margin(equity: Decimal, gross_exposure: Decimal) -> Decimal:
    """What a short may use: the equity not already committed to positions (for a long-only
    account, its cash)."""
    return equity - gross_exposure


def short_quantity(
    price: Decimal,
    position: Decimal,
    equity: Decimal,
    gross_exposure: Decimal,
    order_usd: Decimal,
    max_position_pct: float,
    cash_pct: float,
    step: Decimal = QUANTITY_STEP,
) -> Decimal:
    """order_usd worth of a short, capped so that the short's notional stays within
    max_position_pct of equity and the free margin left stays >= cash_pct of equity."""
    position_room = _pct(equity, max_position_pct) - max(-position, Decimal(0)) * price
    margin_room = free_margin(equity, gross_exposure) - _pct(equity, cash_pct)
    notional = min(order_usd, position_room, margin_room)
    if notional <= 0:
        return Decimal(0)
    return round_down(notional / price, step)


def all_in_short_quantity(
    price: Decimal, equity: Decimal, gross_exposure: Decimal, cash_pct: float, fee_bps: Decimal,
    step: Decimal = QUANTITY_STEP,
) -> Decimal:
    """All the free margin above the cash_pct reserve, with room for the fee at fee_bps."""
    return all_in_quantity(price, equity, free_margin(equity, gross_exposure), cash_pct, fee_bps, step)
