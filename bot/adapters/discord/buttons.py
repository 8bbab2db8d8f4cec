"""Persistent buttons. A button's custom_id carries everything needed to act on it (the action and an id),
so a press works after a restart with nothing kept in memory: the state is read from Postgres.

custom_id format: ``img:<action>:<target>``, at most 100 characters (Discord's limit). The target is a
generation id (regenerate, cancel, delete), an image id (variation) or a history page number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import discord

from bot.core.ids import is_valid_id
from bot.core.models import Generation, HistoryPage, ImageRecord

PREFIX = "img"
MAX_CUSTOM_ID = 100
MAX_PAGE = 999_999
# Deliberately broad: every press on one of our buttons reaches the callback, which answers a payload it
# cannot decode with an ephemeral error (a narrow pattern would leave such presses unanswered).
TEMPLATE = re.compile(rf"{PREFIX}:(?P<payload>.*)", re.DOTALL)


class Action(StrEnum):
    REGENERATE = "r"
    VARY = "v"
    CANCEL = "c"
    DELETE = "d"
    PAGE = "h"
    NOOP = "n"  # the disabled "2 / 5" page indicator
    REMIX = "m"  # ✏️ on an image: opens a modal with its prompt


_ID_ACTIONS = frozenset({Action.REGENERATE, Action.VARY, Action.CANCEL, Action.DELETE, Action.REMIX})


@dataclass(frozen=True)
class ButtonPayload:
    action: Action
    target: str

    @property
    def page(self) -> int:
        return int(self.target)


def encode(action: Action, target: str | int) -> str:
    custom_id = f"{PREFIX}:{action.value}:{target}"
    if len(custom_id) > MAX_CUSTOM_ID:
        raise ValueError(f"custom_id too long: {custom_id!r}")
    return custom_id


def decode(custom_id: str) -> ButtonPayload | None:
    """The payload, or None if it is malformed (an old format, or anything we never made)."""
    match = re.fullmatch(rf"{PREFIX}:([a-z]):([A-Za-z0-9_-]{{1,32}})", custom_id)
    if match is None:
        return None
    try:
        action = Action(match.group(1))
    except ValueError:
        return None
    target = match.group(2)
    if action in _ID_ACTIONS and not is_valid_id(target):
        return None
    if action not in _ID_ACTIONS and not (target.isdigit() and int(target) <= MAX_PAGE):
        return None
    return ButtonPayload(action, target)


class ButtonHandler(Protocol):
    async def on_button(self, interaction: discord.Interaction, payload: ButtonPayload | None) -> None: ...


class ActionButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """Every button the bot shows. discord.py matches presses on any message, old or new, by the template."""

    def __init__(self, button: discord.ui.Button[Any]) -> None:
        super().__init__(button)

    @classmethod
    def make(
        cls,
        action: Action,
        target: str | int,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        disabled: bool = False,
        row: int | None = None,
    ) -> ActionButton:
        button: discord.ui.Button[Any] = discord.ui.Button(
            style=style, label=label, emoji=emoji, custom_id=encode(action, target), disabled=disabled, row=row
        )
        return cls(button)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ActionButton:
        # Rebuilt from the message as shown; the payload is decoded in the callback, because an exception
        # raised here is swallowed by discord.py and the user would see "This interaction failed".
        shown = item if isinstance(item, discord.ui.Button) else None
        button: discord.ui.Button[Any] = discord.ui.Button(
            style=shown.style if shown else discord.ButtonStyle.secondary,
            label=shown.label if shown else None,
            emoji=shown.emoji if shown else None,
            custom_id=match.string,
            disabled=shown.disabled if shown else False,
        )
        return cls(button)

    async def callback(self, interaction: discord.Interaction) -> None:
        handler: ButtonHandler | None = getattr(interaction.client, "button_handler", None)
        if handler is not None:
            await handler.on_button(interaction, decode(self.custom_id))


# --- views ---------------------------------------------------------------------------------------


def _view(items: Sequence[discord.ui.Item[Any]]) -> discord.ui.View:
    # timeout=None: nothing expires in memory; the buttons keep working as long as the rows exist.
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    return view


def cancel_view(job: Generation) -> discord.ui.View:
    return _view(
        [ActionButton.make(Action.CANCEL, job.id, label="Cancel", emoji="✖", style=discord.ButtonStyle.danger)]
    )


def _image_buttons(generation_id: str, images: Sequence[ImageRecord], row: int) -> list[discord.ui.Item[Any]]:
    items: list[discord.ui.Item[Any]] = [
        ActionButton.make(Action.REGENERATE, generation_id, emoji="🔄", style=discord.ButtonStyle.primary, row=row)
    ]
    for image in sorted(images, key=lambda i: i.index)[:4]:  # 1 + 4 buttons: one full action row
        items.append(ActionButton.make(Action.VARY, image.id, label=f"V{image.index + 1}", row=row))
    return items


def result_view(job: Generation, images: Sequence[ImageRecord]) -> discord.ui.View:
    """🔄 regenerate, V1…Vn variations, ✏️ remix, 🗑 delete (the core refuses anyone but the owner)."""
    items = _image_buttons(job.id, images, row=0)
    ordered = sorted(images, key=lambda i: i.index)[:4]  # 4 + 🗑: one full action row
    for image in ordered:
        label = "Remix" if len(ordered) == 1 else str(image.index + 1)
        items.append(ActionButton.make(Action.REMIX, image.id, emoji="✏️", label=label, row=1))
    items.append(ActionButton.make(Action.DELETE, job.id, emoji="🗑", style=discord.ButtonStyle.danger, row=1))
    return _view(items)


def history_view(page: HistoryPage) -> discord.ui.View:
    items: list[discord.ui.Item[Any]] = []
    if page.items:
        item = page.items[0]
        images = item.images if item.generation.status in ("succeeded", "partial") else ()
        items.extend(_image_buttons(item.generation.id, images, row=0))
    previous = max(page.page - 1, 0)
    items.append(ActionButton.make(Action.PAGE, previous, emoji="◀", disabled=not page.has_previous, row=1))
    items.append(
        ActionButton.make(Action.NOOP, page.page, label=f"{page.page + 1} / {page.pages}", disabled=True, row=1)
    )
    items.append(ActionButton.make(Action.PAGE, page.page + 1, emoji="▶", disabled=not page.has_next, row=1))
    return _view(items)
