"""What the bot says on Discord: texts and captions, pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import discord

from bot.adapters.wording import plural, refund_text, seeds_text, source_text
from bot.core.models import Balance, Generation, HistoryPage, ImageRecord, ModelPrice

MESSAGE_LIMIT = 2000  # characters of content per message
PROMPT_SHOWN = 300  # characters of a prompt shown in captions; the full prompt is in /history

MALFORMED_BUTTON = "That button doesn't work any more. Try /imagine again."
NEED_ATTACH_FILES = (
    "I can't post images in this channel: I'm missing the **Attach Files** permission here. "
    "Ask a server admin to allow it, or use me in another channel or in a DM."
)


# --- text ----------------------------------------------------------------------------------------


def clean(text: str, limit: int = PROMPT_SHOWN) -> str:
    """User text made inert: no markdown, no mentions, and short."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return discord.utils.escape_mentions(discord.utils.escape_markdown(shown))


def _limit(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _summary(job: Generation) -> str:
    return f"“{clean(job.prompt)}” · {plural(job.count, 'image')} · {job.model} · {job.aspect_ratio}"


def _warnings(job: Generation) -> str:
    return "".join(f"\n-# ⚠ {clean(w, 200)}" for w in job.warnings)


def queued_text(job: Generation, position: int) -> str:
    ahead = "next in line" if position <= 0 else f"{plural(position, 'job')} ahead"
    return _limit(f"⏳ **Queued** ({ahead})\n{_summary(job)}{_warnings(job)}")


def started_text(job: Generation) -> str:
    started = job.started_at or job.created_at
    # Discord renders <t:…:R> as a live "x seconds ago": elapsed time without editing the message.
    return _limit(f"🎨 **Generating…** started <t:{int(started.timestamp())}:R>\n{_summary(job)}{_warnings(job)}")


def _details(job: Generation, images: Sequence[ImageRecord]) -> str:
    """Model, shape, and the seeds that made the images (none when no image reports one)."""
    seeds = seeds_text(images)
    return f"{job.model} · {job.aspect_ratio}{f' · {seeds}' if seeds else ''}"


def result_caption(job: Generation, images: Sequence[ImageRecord], notes: Sequence[str] = ()) -> str:
    lines = [f"**{clean(job.prompt)}**", f"{_details(job, images)} · <@{job.owner.platform_user_id}>"]
    if job.status == "partial":
        lines.append(
            f"⚠ {clean(job.error_message or 'Some images could not be made.', 300)} {refund_text(job)}".rstrip()
        )
    lines.extend(f"-# {note}" for note in notes)
    return _limit("\n".join(lines) + _warnings(job))


def failed_text(job: Generation) -> str:
    reason = clean(job.error_message or "The image service failed.", 500)
    return _limit(f"Your images for “{clean(job.prompt, 200)}” couldn't be made: {reason} {refund_text(job)}".rstrip())


def cancelled_text(job: Generation) -> str:
    refund = f" {refund_text(job)}" if job.credits_refunded else ""
    return _limit(f"✖ **Cancelled.**{refund}\n“{clean(job.prompt, 200)}”")


def history_text(page: HistoryPage) -> str:
    if not page.items:
        return "You have no generations yet. Try `/imagine a lighthouse at dusk`."
    g = page.items[0].generation
    lines = [
        f"**Your history** · {page.page + 1} of {page.pages}",
        f"**{clean(g.prompt)}**",
        f"{_details(g, page.items[0].images)} · <t:{int(g.created_at.timestamp())}:f>",
    ]
    if page.items[0].inputs:
        lines.append(source_text(page.items[0].inputs))
    if g.negative_prompt:
        lines.append(f"without: {clean(g.negative_prompt, 200)}")
    if g.status in ("failed", "cancelled"):
        reason = f": {clean(g.error_message, 200)}" if g.error_message else ""
        lines.append(f"{g.status}{reason}")
    elif g.status in ("queued", "running"):
        lines.append(f"{g.status}…")
    return _limit("\n".join(lines))


def models_text(models: Sequence[ModelPrice], default: str) -> str:
    lines = [
        f"• **{clean(m.label, 80)}** (`{m.name}`): {plural(m.cost, 'credit')} per image"
        + (" · the default" if m.name == default else "")
        for m in models
    ]
    return _limit("Models you can use (pick one with the `model` option of /imagine):\n" + "\n".join(lines))


def balance_text(balance: Balance) -> str:
    prices = "\n".join(
        f"• **{clean(m.label, 80)}** (`{m.name}`): {plural(m.cost, 'credit')} per image" for m in balance.models
    )
    if not balance.credits_enabled:
        return _limit(f"Credits are off here: images are free.\n\nModels:\n{prices}")
    bought = f" (you bought {plural(balance.bought, 'credit')})" if balance.bought else ""
    return _limit(f"You have **{plural(balance.balance, 'credit')}**{bought}.\n\nCost per image:\n{prices}")
