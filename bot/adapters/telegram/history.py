"""/history in a private chat: a page of the user's generations, each with its images resent by the
file_id Telegram gave when they were first delivered (no upload, no size limit) and working buttons,
then a footer with ◀ ▶. Images that never reached Telegram are uploaded once and their file_id kept."""

from __future__ import annotations

import logging

from telegram import InlineKeyboardMarkup, Message
from telegram.error import TelegramError

from bot.adapters.telegram import buttons, render
from bot.adapters.telegram.context import PLATFORM
from bot.adapters.telegram.sending import PhotoSource, Sender, is_bad_file_id, largest_file_id
from bot.core.errors import ImagesUnavailable
from bot.core.models import HistoryItem, ImageRecord, UserIdentity
from bot.core.service import GenerationService
from bot.core.storage.base import EXTENSIONS

log = logging.getLogger(__name__)


class HistorySender:
    def __init__(self, sender: Sender, service: GenerationService, page_size: int) -> None:
        self.sender = sender
        self.service = service
        self.page_size = page_size

    async def send_page(self, who: UserIdentity, chat_id: int, page_number: int) -> None:
        """Raises ChatGone when the private chat can't be written to (the user never started the bot)."""
        page = await self.service.history(who, page_number, self.page_size)
        if not page.items:
            await self.sender.text(chat_id, render.EMPTY_HISTORY)
            return
        for item in page.items:
            await self._send_item(chat_id, item)
        await self.sender.text(chat_id, render.history_footer(page), keyboard=buttons.history_keyboard(page))

    async def _send_item(self, chat_id: int, item: HistoryItem) -> None:
        job = item.generation
        images = sorted(item.images, key=lambda image: image.index)
        if not images:
            keyboard = buttons.retry_keyboard(job) if job.is_finished else None
            await self.sender.text(chat_id, render.history_caption(item, render.TEXT_LIMIT), keyboard=keyboard)
            return
        keyboard = buttons.result_keyboard(job, images)
        caption = render.history_caption(item)
        sources = await self._sources(images, by_file_id=True)
        if sources is None:
            await self.sender.text(chat_id, caption + "\n(The image files are no longer available.)", keyboard=keyboard)
            return
        try:
            messages = await self._post(chat_id, item, sources, caption, keyboard)
        except TelegramError as error:
            # A file_id is valid only for the bot that received it: a new bot token means uploading again.
            if not is_bad_file_id(error):
                raise
            log.info("history: stored file_id refused for generation %s, uploading again", job.id)
            sources = await self._sources(images, by_file_id=False)
            if sources is None:
                await self.sender.text(chat_id, caption, keyboard=keyboard)
                return
            messages = await self._post(chat_id, item, sources, caption, keyboard)
        for image, source, message in zip(images, sources, messages, strict=False):
            file_id = largest_file_id(message)
            if file_id and (isinstance(source, bytes) or image.file_refs.get(PLATFORM) != file_id):
                await self.service.record_file_ref(image.id, PLATFORM, file_id)

    async def _post(
        self,
        chat_id: int,
        item: HistoryItem,
        sources: list[PhotoSource],
        caption: str,
        keyboard: InlineKeyboardMarkup,
    ) -> list[Message]:
        images = sorted(item.images, key=lambda image: image.index)
        filenames = [
            f"{image.generation_id}-{image.index + 1}.{EXTENSIONS.get(image.mime_type, 'png')}" for image in images
        ]
        if len(images) == 1:
            return [await self.sender.photo(chat_id, sources[0], caption=caption, filename=filenames[0],
                                            keyboard=keyboard)]
        messages = await self.sender.album(chat_id, sources, caption=caption, filenames=filenames)
        await self.sender.text(
            chat_id, render.album_buttons_text(item.generation, images),
            reply_to=messages[0].message_id, keyboard=keyboard,
        )
        return list(messages)

    async def _sources(self, images: list[ImageRecord], by_file_id: bool) -> list[PhotoSource] | None:
        """What to send for each image: its stored file_id, else its bytes from storage."""
        sources: list[PhotoSource | None] = [
            image.file_refs.get(PLATFORM) if by_file_id else None for image in images
        ]
        missing = [image for image, source in zip(images, sources, strict=True) if source is None]
        if missing:
            try:
                files = await self.service.load_files(missing)
            except ImagesUnavailable as error:
                log.warning("history: image files unavailable: %s", error)
                return None
            loaded = {file.record.id: file.data for file in files}
            sources = [loaded[image.id] if source is None else source for image, source in zip(images, sources,
                                                                                                strict=True)]
        return [source for source in sources if source is not None]
