"""What every front end says the same way: plurals, refunds, seeds and the generic answers."""

from __future__ import annotations

from collections.abc import Sequence

from bot.core.accounts import VALID_MINUTES, Linked
from bot.core.models import Generation, ImageRecord, InputRecord

GENERIC_ERROR = "Sorry, something went wrong on my side. Please try again in a moment."
RESTARTING = "I'm restarting right now and not taking new work. Please try again in a minute."


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def refund_text(job: Generation) -> str:
    """"2 credits refunded." or "" when nothing was refunded."""
    if not job.credits_refunded:
        return ""
    return f"{plural(job.credits_refunded, 'credit')} refunded."



def seeds_text(images: Sequence[ImageRecord]) -> str:
    """The seeds that made these images ("seed 7", "seeds 7, 8"), or "" when no image reports one: a model
    that ignores seeds made its images with none the bot can show (never the job's own seed)."""
    seeds = [image.seed for image in sorted(images, key=lambda image: image.index) if image.seed is not None]
    if not seeds:
        return ""
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(str(seed) for seed in seeds)


def source_text(inputs: Sequence[InputRecord]) -> str:
    """"from your image" (an edit), "from your 2 images", or "" when it started from words alone."""
    if not inputs:
        return ""
    return "from your image" if len(inputs) == 1 else f"from your {len(inputs)} images"


def link_code_text(code: str, command: str = "/link") -> str:
    """What /link answers with: the code and how to use it on the other platform."""
    return (
        f"Your link code: {code}\n"
        f"On your other platform, send {command} {code} within {VALID_MINUTES} minutes to make the two one "
        "account: one balance, one history. The code works once; don't share it."
    )


def linked_text(linked: Linked) -> str:
    names = [p.capitalize() for p in linked.platforms]
    platforms = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    brought = f" {plural(linked.moved, 'credit')} moved over;" if linked.moved else ""
    return f"Linked: {platforms} are now one account.{brought} your balance is {linked.balance}."
