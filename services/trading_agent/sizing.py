"""Order sizes, in exact Decimal arithmetic (the original's USD_SIZE,
MAX_POSITION_PERCENTAGE and CASH_PERCENTAGE).

Quantities are rounded DOWN to 6 decimals, so rounding can never make an order
bigger than its limits; a size that rounds to zero means "no order".
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

QUANTITY_STEP = Decimal("0.000001")


def round_down(quantity: Decimal) -> Decimal:
    if quantity <= 0:
        return Decimal(0)
    return quantity.quantize(QUANTITY_STEP, rounding=ROUND_DOWN)


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
) -> Decimal:
    """order_usd worth, capped so that the long position's notional stays within
    max_position_pct of equity and the cash left stays >= cash_pct of equity."""
    position_room = _pct(equity, max_position_pct) - max(position, Decimal(0)) * price
    cash_room = cash - _pct(equity, cash_pct)
    notional = min(order_usd, position_room, cash_room)
    if notional <= 0:
        return Decimal(0)
    return round_down(notional / price)


def reduce_quantity(price: Decimal, position: Decimal, order_usd: Decimal) -> Decimal:
    """Reduce a position (long or short) by up to order_usd worth, never past zero."""
    return round_down(min(abs(position), order_usd / price))
