"""Pictures users send on Telegram: which messages carry one, their size checked before downloading,
the download through getFile, and albums gathered into one request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from telegram import Bot, Message
from telegram.error import BadRequest

from bot.core.errors import InvalidRequest
from bot.core.input_images import UploadedImage, megabytes

log = logging.getLogger(__name__)

# getFile on the public Bot API serves files up to this size (a local Bot API server has no such limit).
DOWNLOAD_LIMIT = 20 * 1024 * 1024
TOO_BIG = "Telegram lets bots download files up to 20 MB{size}. Please send a smaller picture."
GONE = "I couldn't fetch that picture from Telegram any more. Please send it again."
# An album arrives as one message per picture; they come within moments of each other.
ALBUM_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class PictureRef:
    """A picture on Telegram's servers, not yet downloaded."""

    file_id: str
    size: int | None  # as Telegram reports it
    filename: str = ""
    mime_type: str = ""


def picture_of(message: Message | None, any_document: bool = False) -> PictureRef | None:
    """The picture a message carries: its largest photo size, or a file sent as an image (any file, when
    the user asked for an edit explicitly: the checks then say why it isn't one)."""
    if message is None:
        return None
    if message.photo:
        largest = message.photo[-1]
        return PictureRef(largest.file_id, largest.file_size, "photo.jpg", "image/jpeg")
    document = message.document
    if document is not None and (any_document or (document.mime_type or "").startswith("image/")):
        return PictureRef(document.file_id, document.file_size, document.file_name or "", document.mime_type or "")
    return None


def refuse_too_big(pictures: list[PictureRef]) -> None:
    """Before any download: Telegram would refuse it anyway, after we asked."""
    for picture in pictures:
        if picture.size is not None and picture.size > DOWNLOAD_LIMIT:
            raise InvalidRequest(TOO_BIG.format(size=f", and that one is {megabytes(picture.size)}"))


async def download(bot: Bot, picture: PictureRef) -> UploadedImage:
    refuse_too_big([picture])
    try:
        file = await bot.get_file(picture.file_id)
        if file.file_size is not None and file.file_size > DOWNLOAD_LIMIT:
            raise InvalidRequest(TOO_BIG.format(size=f", and that one is {megabytes(file.file_size)}"))
        data = await file.download_as_bytearray()
    except BadRequest as error:
        if "too big" in error.message.lower():
            raise InvalidRequest(TOO_BIG.format(size="")) from None
        if "file" in error.message.lower():
            raise InvalidRequest(GONE) from None
        raise
    return UploadedImage(bytes(data), picture.filename, picture.mime_type)


class Albums:
    """Messages of one album (a media_group_id) gathered for a moment, then handled together."""

    def __init__(self, handle: Callable[[list[Message]], Awaitable[None]], wait: float = ALBUM_WAIT_SECONDS) -> None:
        self.handle = handle
        self.wait = wait
        self._gathering: dict[tuple[int, str], list[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, message: Message) -> None:
        assert message.media_group_id is not None
        key = (message.chat.id, message.media_group_id)
        if key in self._gathering:
            if all(m.message_id != message.message_id for m in self._gathering[key]):  # delivered twice
                self._gathering[key].append(message)
            return
        self._gathering[key] = [message]
        task = asyncio.create_task(self._after_a_moment(key), name=f"telegram-album-{message.media_group_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_a_moment(self, key: tuple[int, str]) -> None:
        await asyncio.sleep(self.wait)
        messages = sorted(self._gathering.pop(key), key=lambda m: m.message_id)
        try:
            await self.handle(messages)
        except Exception:
            log.exception("telegram: handling an album failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
