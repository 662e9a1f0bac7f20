"""Entry modules of the shop's workers, one per worker definition."""
