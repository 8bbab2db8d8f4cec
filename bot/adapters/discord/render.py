"""What the bot says on Discord, and images fitted under Discord's upload limit. No I/O here."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import discord
from PIL import Image

from bot.adapters.discord.internals import ImageUpload
from bot.core.models import Balance, Generation, HistoryPage, ImageFile
from bot.core.storage.base import EXTENSIONS

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000  # characters of content per message
MAX_FILES_PER_MESSAGE = 10
PROMPT_SHOWN = 300  # characters of a prompt shown in captions; the full prompt is in /history
# Re-encodings tried, best first, when an image is over the limit; then the image is scaled down.
_ENCODINGS: tuple[tuple[str, int], ...] = (("WEBP", 90), ("WEBP", 75), ("JPEG", 85), ("JPEG", 70))
_MIN_SIDE = 64

RESTARTING = "I'm restarting right now and not taking new work. Please try again in a minute."
GENERIC_ERROR = "Something went wrong on my side. Please try again in a moment."
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


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def refund_text(job: Generation) -> str:
    if not job.credits_refunded:
        return ""
    return f"{plural(job.credits_refunded, 'credit')} refunded."


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


def result_caption(job: Generation, notes: Sequence[str] = ()) -> str:
    lines = [
        f"**{clean(job.prompt)}**",
        f"{job.model} · {job.aspect_ratio} · seed {job.seed} · <@{job.owner.platform_user_id}>",
    ]
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
        f"{g.model} · {g.aspect_ratio} · seed {g.seed} · <t:{int(g.created_at.timestamp())}:f>",
    ]
    if g.negative_prompt:
        lines.append(f"without: {clean(g.negative_prompt, 200)}")
    if g.status in ("failed", "cancelled"):
        reason = f": {clean(g.error_message, 200)}" if g.error_message else ""
        lines.append(f"{g.status}{reason}")
    elif g.status in ("queued", "running"):
        lines.append(f"{g.status}…")
    return _limit("\n".join(lines))


def balance_text(balance: Balance) -> str:
    prices = "\n".join(
        f"• **{clean(m.label, 80)}** (`{m.name}`): {plural(m.cost, 'credit')} per image" for m in balance.models
    )
    if not balance.credits_enabled:
        return _limit(f"Credits are off here: images are free.\n\nModels:\n{prices}")
    return _limit(f"You have **{plural(balance.balance, 'credit')}**.\n\nCost per image:\n{prices}")


# --- images --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One image ready to attach: maybe re-encoded to fit."""

    index: int  # the image's number in its generation (0-based)
    filename: str
    data: bytes
    reencoded: bool

    def file(self) -> discord.File:
        # A fresh File each time: discord.py consumes the stream when it sends.
        return discord.File(ImageUpload(self.data), filename=self.filename)


@dataclass(frozen=True)
class FittedImages:
    messages: list[list[Upload]]  # one list of uploads per message, each within the limit
    too_big: list[int]  # image indexes that could not be made small enough (reported, never dropped silently)

    @property
    def reencoded(self) -> bool:
        return any(u.reencoded for group in self.messages for u in group)

    def notes(self) -> list[str]:
        notes = []
        if self.reencoded:
            notes.append("Some images were re-encoded to fit Discord's upload limit.")
        if self.too_big:
            numbers = ", ".join(str(i + 1) for i in self.too_big)
            notes.append(f"Image {numbers} was too large to upload here; it is kept in your /history.")
        return notes


def fit_images(images: Sequence[ImageFile], limit: int, prefix: str = "image") -> FittedImages:
    """Each image at most `limit` bytes (re-encoded to WebP/JPEG, then scaled down, only if needed),
    packed into as few messages as fit `limit` bytes and 10 files each. CPU-bound: run it in a thread."""
    uploads: list[Upload] = []
    too_big: list[int] = []
    for image in sorted(images, key=lambda i: i.record.index):
        upload = _fit_one(image, limit, prefix)
        if upload is None:
            too_big.append(image.record.index)
        else:
            uploads.append(upload)
    messages: list[list[Upload]] = []
    current: list[Upload] = []
    size = 0
    for upload in uploads:
        if current and (size + len(upload.data) > limit or len(current) >= MAX_FILES_PER_MESSAGE):
            messages.append(current)
            current, size = [], 0
        current.append(upload)
        size += len(upload.data)
    if current:
        messages.append(current)
    return FittedImages(messages, too_big)


def _fit_one(image: ImageFile, limit: int, prefix: str) -> Upload | None:
    index = image.record.index
    if len(image.data) <= limit:
        extension = EXTENSIONS.get(image.record.mime_type, "png")
        return Upload(index, f"{prefix}-{index + 1}.{extension}", image.data, False)
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError):
        log.warning("image %s is over the upload limit and can't be decoded to shrink it", image.record.id)
        return None
    while True:
        for fmt, quality in _ENCODINGS:
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, quality=quality)
            if buffer.tell() <= limit:
                extension = "webp" if fmt == "WEBP" else "jpg"
                return Upload(index, f"{prefix}-{index + 1}.{extension}", buffer.getvalue(), True)
        width, height = picture.size
        if min(width, height) * 3 // 4 < _MIN_SIDE:
            return None
        picture = picture.resize((width * 3 // 4, height * 3 // 4), Image.Resampling.LANCZOS)
