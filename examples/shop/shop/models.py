"""The application's models: what a long-running worker keeps in memory."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Order:
    """One customer order."""

    id: int
    customer: str
    total_cents: int
    items: tuple[str, ...] = field(default_factory=tuple)


def sample_orders(count: int) -> list[Order]:
    """Orders a job can work on without a database of its own."""
    return [Order(id=n, customer=f"customer-{n}", total_cents=100 * n) for n in range(1, count + 1)]
