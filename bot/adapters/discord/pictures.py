"""Pictures users bring on Discord: attachments (of /imagine, or of a message picked from Apps), their size
checked before downloading, and the modals that ask for a prompt (✏️ Remix, "Imagine from this image").

A modal's submission arrives as its own interaction, possibly after a restart: its custom_id names what
it is for (an image id, or the question kept in Postgres), so nothing is held in memory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import discord

from bot.core.errors import InvalidRequest
from bot.core.ids import is_valid_id
from bot.core.input_images import MAX_INPUT_BYTES, UploadedImage, refuse_if_too_large

MODAL_PREFIX = "imgm"  # not "img:": modals are not buttons, and never reach ActionButton
PROMPT_FIELD = "prompt"
MAX_PROMPT = 4000  # a text input's limit
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic")
NO_PICTURE = "That message has no picture attached. Pick a message with an image."


@dataclass(frozen=True)
class ModalPurpose:
    kind: str  # "r": remix image `target`; "e": edit the pictures of question `target`
    target: str


def modal_custom_id(interaction: discord.Interaction) -> str:
    data: dict[str, Any] = dict(interaction.data or {})
    return str(data.get("custom_id", ""))


def remix_custom_id(image_id: str) -> str:
    return f"{MODAL_PREFIX}:r:{image_id}"


def edit_custom_id(question_id: str) -> str:
    return f"{MODAL_PREFIX}:e:{question_id}"


def decode_modal(custom_id: str) -> ModalPurpose | None:
    match = re.fullmatch(rf"{MODAL_PREFIX}:([re]):([A-Za-z0-9_-]{{1,32}})", custom_id)
    if match is None:
        return None
    kind, target = match.groups()
    if kind == "r" and not is_valid_id(target):
        return None
    if kind == "e" and not target.isdigit():
        return None
    return ModalPurpose(kind, target)


def prompt_modal(title: str, custom_id: str, prompt: str = "") -> discord.ui.Modal:
    """A modal with one long text input, prefilled. The submission is handled from its custom_id (see
    DiscordHandlers.on_modal), not by this object."""
    modal = discord.ui.Modal(title=title[:45], custom_id=custom_id, timeout=None)
    field: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Prompt", custom_id=PROMPT_FIELD, style=discord.TextStyle.long, default=prompt[:MAX_PROMPT] or None,
        max_length=MAX_PROMPT, required=True, placeholder="What to make of the picture",
    )
    modal.add_item(field)
    return modal


def submitted_prompt(interaction: discord.Interaction) -> str:
    """The text typed into the modal's prompt field."""
    data: dict[str, Any] = dict(interaction.data or {})
    for row in data.get("components") or []:
        for item in row.get("components", []):
            if item.get("custom_id") == PROMPT_FIELD:
                return str(item.get("value") or "")
    return ""


def is_picture(attachment: discord.Attachment) -> bool:
    if attachment.content_type:
        return attachment.content_type.startswith("image/")
    return attachment.filename.lower().endswith(IMAGE_EXTENSIONS)


def pictures_of(message: discord.Message) -> list[discord.Attachment]:
    pictures = [a for a in message.attachments if is_picture(a)]
    if not pictures:
        raise InvalidRequest(NO_PICTURE)
    return pictures


def refuse_too_big(attachments: list[discord.Attachment]) -> None:
    """Before downloading: the size Discord reports."""
    for attachment in attachments:
        refuse_if_too_large(attachment.size)


async def download(attachment: discord.Attachment) -> UploadedImage:
    refuse_if_too_large(attachment.size)
    try:
        data = await attachment.read()
    except (discord.HTTPException, discord.NotFound):
        raise InvalidRequest("I couldn't fetch that picture from Discord. Please upload it again.") from None
    return UploadedImage(data, attachment.filename, attachment.content_type or "")


async def download_url(client: discord.Client, url: str) -> UploadedImage:
    """A picture remembered by its address (a question kept while the modal was open)."""
    try:
        data = await client.http.get_from_cdn(url)
    except (discord.HTTPException, discord.NotFound):
        raise InvalidRequest("That picture is no longer available on Discord. Please upload it again.") from None
    if len(data) > MAX_INPUT_BYTES:
        refuse_if_too_large(len(data))
    return UploadedImage(data, url.rsplit("/", 1)[-1].partition("?")[0])
