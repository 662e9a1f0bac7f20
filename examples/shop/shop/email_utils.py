"""Mail formatting; the ``mail`` worker imports nothing else from the app."""

from __future__ import annotations


def render_message(to: str, subject: str, body: str) -> str:
    """An RFC 5322-shaped message as text."""
    if "@" not in to:
        raise ValueError(f"not an address: {to!r}")
    return f"To: {to}\nSubject: {subject}\n\n{body}\n"
