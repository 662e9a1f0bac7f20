"""Entry of the ``backup`` worker: jobs that walk the models."""

from __future__ import annotations

from shop import models


def backup_orders(count: int = 10) -> dict[str, int]:
    """Pretend to back up ``count`` orders; returns how many were written."""
    orders = models.sample_orders(count)
    return {"backed_up": len(orders)}
