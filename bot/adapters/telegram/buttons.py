"""Buttons: the callback_data codec and the keyboards that carry it.

Telegram allows 1–64 bytes of callback_data and gives it back verbatim when a button
is pressed, so each payload carries an action letter and short core ids: nothing is kept in memory, and
a button works after a restart. Payloads come back from clients, so decoding trusts nothing."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core import models
from bot.core.ids import is_valid_id

MAX_BYTES = 64
MAX_PAGE = 99_999
_USER_ID = re.compile(r"[0-9]{1,20}")
_PAGE = re.compile(r"0|[1-9][0-9]{0,4}")  # canonical: no leading zeros
FAILED_NO_RETRY = frozenset({"content_refused"})  # retrying the same prompt would be refused again


@dataclass(frozen=True)
class Regenerate:
    generation_id: str


@dataclass(frozen=True)
class Vary:
    image_id: str


@dataclass(frozen=True)
class Originals:
    generation_id: str


@dataclass(frozen=True)
class Cancel:
    generation_id: str
    # The owner's Telegram id lets a stranger's press be refused at once, without a database round trip.
    # The core still checks ownership: a forged owner id gains nothing.
    owner_id: str


@dataclass(frozen=True)
class PageButton:
    page: int  # 0-based


@dataclass(frozen=True)
class Remix:
    """✏️: asks for a new prompt for this image (a ForceReply); the reply makes the remix."""

    image_id: str


Action = Regenerate | Vary | Originals | Cancel | PageButton | Remix


def encode(action: Action) -> str:
    match action:
        case Regenerate(generation_id):
            data = f"r:{generation_id}"
        case Vary(image_id):
            data = f"v:{image_id}"
        case Originals(generation_id):
            data = f"o:{generation_id}"
        case Cancel(generation_id, owner_id):
            data = f"x:{generation_id}:{owner_id}"
        case PageButton(page):
            data = f"h:{page}"
        case Remix(image_id):
            data = f"e:{image_id}"
    if len(data.encode()) > MAX_BYTES:  # cannot happen with 12-char ids; a guard for future actions
        raise ValueError(f"callback_data too long: {data!r}")
    return data


def decode(data: str | None) -> Action | None:
    """The action a payload names, or None for anything malformed, foreign or out of bounds."""
    if not data or len(data.encode(errors="surrogatepass")) > MAX_BYTES:  # JSON can carry lone surrogates
        return None
    kind, _, rest = data.partition(":")
    parts = rest.split(":")
    if kind == "r" and len(parts) == 1 and is_valid_id(parts[0]):
        return Regenerate(parts[0])
    if kind == "v" and len(parts) == 1 and is_valid_id(parts[0]):
        return Vary(parts[0])
    if kind == "o" and len(parts) == 1 and is_valid_id(parts[0]):
        return Originals(parts[0])
    if kind == "x" and len(parts) == 2 and is_valid_id(parts[0]) and _USER_ID.fullmatch(parts[1]):
        return Cancel(parts[0], parts[1])
    if kind == "e" and len(parts) == 1 and is_valid_id(parts[0]):
        return Remix(parts[0])
    if kind == "h" and len(parts) == 1 and _PAGE.fullmatch(parts[0]) and int(parts[0]) <= MAX_PAGE:
        return PageButton(int(parts[0]))
    return None


# --- keyboards ------------------------------------------------------------------------------------


def _button(text: str, action: Action) -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=encode(action))


def cancel_keyboard(job: models.Generation) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[_button("✖ Cancel", Cancel(job.id, job.owner.platform_user_id))]])


def result_keyboard(job: models.Generation, images: Sequence[models.ImageRecord]) -> InlineKeyboardMarkup:
    originals = "📎 Original" if len(images) == 1 else "📎 Originals"
    rows = [[_button("🔄", Regenerate(job.id)), _button(originals, Originals(job.id))]]
    ordered = sorted(images, key=lambda image: image.index)
    # At most 4 images per job today; 5 per row keeps a future larger count readable.
    variations = [_button(f"V{position}", Vary(image.id)) for position, image in enumerate(ordered, start=1)]
    rows.extend(variations[i : i + 5] for i in range(0, len(variations), 5))
    if len(ordered) == 1:
        rows.append([_button("✏️ Remix", Remix(ordered[0].id))])
    else:
        remixes = [_button(f"✏️{position}", Remix(image.id)) for position, image in enumerate(ordered, start=1)]
        rows.extend(remixes[i : i + 5] for i in range(0, len(remixes), 5))
    return InlineKeyboardMarkup(rows)


def retry_keyboard(job: models.Generation) -> InlineKeyboardMarkup | None:
    if job.error_code in FAILED_NO_RETRY:
        return None
    return InlineKeyboardMarkup([[_button("🔄 Try again", Regenerate(job.id))]])


def history_keyboard(page: models.HistoryPage) -> InlineKeyboardMarkup | None:
    row = []
    if page.has_previous:
        row.append(_button("◀ Newer", PageButton(page.page - 1)))
    if page.has_next:
        row.append(_button("Older ▶", PageButton(page.page + 1)))
    return InlineKeyboardMarkup([row]) if row else None


def deep_link_keyboard(url: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton("Open a private chat", url=url)]])
