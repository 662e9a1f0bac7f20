"""Totals over orders."""

from __future__ import annotations

from collections.abc import Iterable

from shop.models import Order


def revenue_cents(orders: Iterable[Order]) -> int:
    """The sum of the orders' totals."""
    return sum(order.total_cents for order in orders)
