"""Entry of the ``reports`` worker: models plus the reports package."""

from __future__ import annotations

from shop import models, reports


def daily_revenue(count: int = 10) -> dict[str, int]:
    """Revenue over ``count`` sample orders."""
    return {"revenue_cents": reports.revenue_cents(models.sample_orders(count))}
