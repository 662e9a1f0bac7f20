"""Report building on top of the models."""

from shop.reports.totals import revenue_cents

__all__ = ["revenue_cents"]
