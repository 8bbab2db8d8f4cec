"""What every front end says the same way: plurals, refunds and the generic answers."""

from __future__ import annotations

from bot.core.models import Generation

GENERIC_ERROR = "Sorry, something went wrong on my side. Please try again in a moment."
RESTARTING = "I'm restarting right now and not taking new work. Please try again in a minute."


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def refund_text(job: Generation) -> str:
    """"2 credits refunded." or "" when nothing was refunded."""
    if not job.credits_refunded:
        return ""
    return f"{plural(job.credits_refunded, 'credit')} refunded."

