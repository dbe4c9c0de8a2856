"""Order sizes, in exact Decimal arithmetic.

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


def buy_quantity(
    price: Decimal,
    position: Decimal,
    equity: Decimal,
    order_usd: Decimal,
    max_position_pct: float,
) -> Decimal:
    """order_usd worth, capped so the long position's notional stays within
    max_position_pct of equity."""
    cap = equity * Decimal(str(max_position_pct)) / 100
    room = cap - max(position, Decimal(0)) * price
    if room <= 0:
        return Decimal(0)
    return round_down(min(order_usd, room) / price)


def sell_quantity(price: Decimal, position: Decimal, order_usd: Decimal) -> Decimal:
    """Reduce a long position by up to order_usd worth; never sell below zero (no shorting)."""
    if position <= 0:
        return Decimal(0)
    return round_down(min(position, order_usd / price))
