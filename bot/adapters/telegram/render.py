"""What the bot says: texts and captions, pure functions. Plain text only (no parse mode): prompts are user text,
and nothing a user types can then break a message's markup."""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.adapters.telegram import buttons
from bot.adapters.wording import plural, refund_text, seeds_text, source_text
from bot.core.models import Balance, Generation, HistoryItem, HistoryPage, ImageRecord, ModelPrice, UserIdentity

# Telegram's limits, counted in UTF-16 code units (how the Bot API measures text).
CAPTION_LIMIT = 1024
TEXT_LIMIT = 4096
ELLIPSIS = "…"
_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 units, marked with an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(ELLIPSIS)
    cut = []
    used = 0
    for char in text:
        size = utf16_len(char)
        if used + size > budget:
            break
        cut.append(char)
        used += size
    return "".join(cut).rstrip() + ELLIPSIS


def quoted_prompt(prompt: str, rest: str, limit: int) -> str:
    """“prompt” followed by `rest`, the prompt shortened so that the whole fits in `limit`."""
    room = limit - utf16_len(rest) - 2  # the two quotation marks
    return f"“{fit(prompt, max(room, 1))}”{rest}"


def _refund_note(job: Generation) -> str:
    refund = refund_text(job)
    return f" {refund}" if refund else ""


def _kind_note(job: Generation) -> str:
    return {"regenerate": " · 🔄 new seed", "variation": " · variation"}.get(job.kind, "")


def details(job: Generation, images: Sequence[ImageRecord] = ()) -> str:
    """Model, shape, and the seeds that made the images (none before there are images)."""
    seeds = seeds_text(images)
    return f"{job.model} · {job.aspect_ratio}{f' · {seeds}' if seeds else ''}{_kind_note(job)}"


def owner_note(job: Generation, in_group: bool) -> str:
    name = job.owner.display_name
    return f" · for {name}" if in_group and name else ""


# --- a job's life -------------------------------------------------------------------------------


def queued_text(job: Generation, position: int) -> str:
    ahead = f"{position} ahead of you" if position else "you're next"
    images = "1 image" if job.count == 1 else f"{job.count} images"
    lines = [f"⏳ Queued ({ahead}): {images}, {details(job)}"]
    if job.credits_reserved:
        lines.append(f"{plural(job.credits_reserved, 'credit')} reserved (refunded if it fails).")
    lines.extend(f"Note: {warning}" for warning in job.warnings)
    return quoted_prompt(job.prompt, "\n" + "\n".join(lines), TEXT_LIMIT)


def generating_text(job: Generation, elapsed: float | None = None) -> str:
    images = "1 image" if job.count == 1 else f"{job.count} images"
    took = f" ({int(elapsed)} s)" if elapsed is not None and elapsed >= 1 else ""
    return quoted_prompt(job.prompt, f"\n🎨 Generating {images} with {job.model}…{took}", TEXT_LIMIT)


def result_caption(job: Generation, images: Sequence[ImageRecord], in_group: bool = False) -> str:
    rest = f"\n{details(job, images)}{owner_note(job, in_group)}"
    if job.status == "partial":
        rest += f"\n⚠ {job.error_message or 'Some images could not be made.'}{_refund_note(job)}"
    return quoted_prompt(job.prompt, rest, CAPTION_LIMIT)


def album_buttons_text(job: Generation, images: Sequence[ImageRecord]) -> str:
    """The message under an album (albums can't carry buttons)."""
    count = len(images)
    rest = f"\n{count} images · {details(job, images)}\n🔄 new seed · V1–V{count} vary one · 📎 original files"
    if job.status == "partial":
        rest += f"\n⚠ {job.error_message or 'Some images could not be made.'}{_refund_note(job)}"
    return quoted_prompt(job.prompt, rest, TEXT_LIMIT)


def failed_text(job: Generation) -> str:
    reason = job.error_message or "The images could not be made."
    return quoted_prompt(job.prompt, f"\n❌ {reason}{_refund_note(job)}", TEXT_LIMIT)


def cancelled_text(job: Generation) -> str:
    return quoted_prompt(job.prompt, f"\n✖ Cancelled.{_refund_note(job)}", TEXT_LIMIT)


def done_text(job: Generation) -> str:
    return quoted_prompt(job.prompt, "\n✅ Done.", TEXT_LIMIT)


# --- history ----------------------------------------------------------------------------------------


def history_caption(item: HistoryItem, limit: int = CAPTION_LIMIT) -> str:
    job = item.generation
    when = job.created_at.strftime("%Y-%m-%d %H:%M UTC")
    status = {
        "partial": f" · {len(item.images)} of {job.count} made",
        "failed": " · ❌ failed",
        "cancelled": " · ✖ cancelled",
        "queued": " · ⏳ queued",
        "running": " · 🎨 generating",
    }.get(job.status, "")
    source = f" · {source_text(item.inputs)}" if item.inputs else ""
    return quoted_prompt(job.prompt, f"\n{details(job, item.images)}{source}\n{when}{status}", limit)


def history_footer(page: HistoryPage) -> str:
    total = "1 generation" if page.total == 1 else f"{page.total} generations"
    return f"🗂 Page {page.page + 1} of {page.pages} · {total}, newest first."


EMPTY_HISTORY = "No images yet. Try /imagine a lighthouse at dusk"


# --- commands and buttons -------------------------------------------------------------------------

UNKNOWN_COMMAND = "I don't know that command. Try /help."
UNKNOWN_BUTTON = "This button isn't one I know (or it has expired)."
NOT_YOURS_TO_CANCEL = "Only the person who asked for these images can cancel them."
NO_MESSAGE = "This button can't be used here."
HISTORY_SENT = "📬 Sent your history to our private chat."
HISTORY_NEEDS_PRIVATE_CHAT = (
    "I can only show your history in our private chat, and you haven't started one yet. "
    "Tap below, press Start, and it's there."
)


def plain(text: str) -> str:
    """A core message as it reads without markup (no parse mode here): `code` loses its backticks."""
    return _CODE_SPAN.sub(r"\1", text)


def toast(action: buttons.Action) -> str | None:
    """The short notice a button press gets at once."""
    match action:
        case buttons.Regenerate():
            return "🔄 On it: same prompt, new seed."
        case buttons.Vary():
            return "Making a variation…"
        case buttons.Cancel():
            return "Cancelling…"
        case buttons.Originals():
            return "📎 Sending the original files…"
        case buttons.Remix():
            return "✏️ Reply with the new prompt."
    return None


def what_to_do(pictures: int) -> str:
    """The ForceReply a picture with no caption gets."""
    these = "this picture" if pictures == 1 else f"these {pictures} pictures"
    return (
        f"What should I do with {these}? Reply to this message with a prompt, e.g. “make it snowy”. "
        "Options work too: --ar 16:9 --n 2 --model name."
    )


def remix_question(prompt: str) -> str:
    """The ForceReply a ✏️ press sends: the old prompt, to copy and change (Telegram can't prefill a reply)."""
    return fit(f"✏️ Remix: reply to this message with the new prompt for this image.\n\nIt was:\n{prompt}", TEXT_LIMIT)


def adjusted_text(target: UserIdentity, amount: int, applied: int, balance: int) -> str:
    """What an admin is told after /grant (applied > 0) or /revoke."""
    name = target.display_name or target.platform_user_id
    if applied > 0:
        return f"Added {plural(applied, 'credit')} to {name}. Their balance is now {balance}."
    removed = -applied
    short = f" (only {removed}: a balance stops at zero)" if removed < amount else ""
    return f"Removed {plural(removed, 'credit')} from {name}{short}. Their balance is now {balance}."


# --- commands ---------------------------------------------------------------------------------------


def _prices(models: Sequence[ModelPrice], credits_enabled: bool) -> str:
    lines = []
    for model in models:
        cost = f": {plural(model.cost, 'credit')} per image" if credits_enabled else ""
        lines.append(f"• {model.name} ({model.label}){cost}")
    return "\n".join(lines)


def models_text(models: Sequence[ModelPrice], default: str) -> str:
    lines = [
        f"• {m.name} ({m.label}): {plural(m.cost, 'credit')} per image{' · the default' if m.name == default else ''}"
        for m in models
    ]
    return "Models you can use (pick one with --model name):\n" + "\n".join(lines)


def balance_text(balance: Balance) -> str:
    if not balance.credits_enabled:
        return "Credits are off here: make as many images as you like.\nModels:\n" + _prices(balance.models, False)
    bought = f" ({plural(balance.bought, 'credit')} of them bought)" if balance.bought else ""
    return f"You have {plural(balance.balance, 'credit')}{bought}.\nPrices:\n" + _prices(balance.models, True)


def help_text(bot_username: str, models: Sequence[ModelPrice], default_model: str) -> str:
    mention = f"@{bot_username}" if bot_username else ""
    return (
        "I make images from a description.\n\n"
        "/imagine <prompt> [options], e.g.\n"
        "/imagine a lighthouse at dusk --ar 16:9 --n 2\n\n"
        "Options:\n"
        "--ar 16:9  aspect ratio (1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3)\n"
        "--n 2  how many images (1–4)\n"
        "--seed 7  repeat a result\n"
        f"--model name  which model (default {default_model})\n"
        "--no text  what to leave out\n\n"
        "In our private chat you can simply type the description.\n"
        f"In groups use /imagine{mention} <prompt>.\n\n"
        "To change a picture of yours, send it with the caption /imagine <what to change> (or reply to it "
        "with that); in our private chat any caption will do. An album gives several pictures.\n\n"
        "Under each result: 🔄 the same prompt with a new seed, V1… a variation of that image, "
        "📎 the original files (Telegram compresses photos), ✏️ a new prompt for that image.\n\n"
        "/history  your earlier images (in our private chat)\n"
        "/balance  your credits and the prices\n"
        "/models  the models and what each costs\n"
        "/buy  buy credits with Telegram Stars (/terms, /paysupport)\n"
        "/link  one account with your Discord\n\n"
        "Models:\n" + _prices(models, False)
    )


def welcome_text(name: str, balance: Balance, bot_username: str, models: Sequence[ModelPrice], default: str) -> str:
    greeting = f"Hi {name}! " if name else "Hi! "
    credits = f"You have {plural(balance.balance, 'credit')}.\n\n" if balance.credits_enabled else ""
    return f"{greeting}{credits}" + help_text(bot_username, models, default)
