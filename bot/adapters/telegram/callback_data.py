"""Button payloads. Telegram allows 1–64 bytes of callback_data and gives it back verbatim when a button
is pressed, so each payload carries an action letter and short core ids: nothing is kept in memory, and
a button works after a restart. Payloads come back from clients, so decoding trusts nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.core.ids import is_valid_id

MAX_BYTES = 64
MAX_PAGE = 99_999
_USER_ID = re.compile(r"^[0-9]{1,20}$")
_PAGE = re.compile(r"^[0-9]{1,5}$")


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
class HistoryPage:
    page: int  # 0-based


Action = Regenerate | Vary | Originals | Cancel | HistoryPage


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
        case HistoryPage(page):
            data = f"h:{page}"
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
    if kind == "x" and len(parts) == 2 and is_valid_id(parts[0]) and _USER_ID.match(parts[1]):
        return Cancel(parts[0], parts[1])
    if kind == "h" and len(parts) == 1 and _PAGE.match(parts[0]) and int(parts[0]) <= MAX_PAGE:
        return HistoryPage(int(parts[0]))
    return None
