"""Entry of the ``mail`` worker: it imports only ``email_utils`` from the app."""

from __future__ import annotations

from shop import email_utils


def send_email(to: str, subject: str = "hello", body: str = "") -> dict[str, int]:
    """Render a message (sending is out of scope for the demo); returns its size."""
    message = email_utils.render_message(to, subject, body)
    return {"bytes": len(message)}
