"""Sending to Telegram with its everyday failures handled in one place.

- 429 flood waits are retried below this layer (ratelimit.FloodWaitLimiter).
- The replied-to message was deleted: every reply allows sending without it; if a topic vanished, the
  message goes to the chat without the thread.
- Text or caption too long: cut and sent again (texts are fitted beforehand; this is the safety net).
- A photo too big for Telegram: re-encoded smaller and sent again.
- The chat is gone for good (bot blocked, kicked, chat not found, no right to write): `ChatGone`, which
  callers treat as "nothing more to do here", never as a reason to retry.
Anything else (network trouble, Telegram's own 5xx) propagates: the caller decides whether to retry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from telegram import (
    Bot,
    CallbackQuery,
    ForceReply,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, TelegramError

from bot.adapters.telegram import media
from bot.adapters.telegram.render import CAPTION_LIMIT, TEXT_LIMIT, fit

log = logging.getLogger(__name__)

T = TypeVar("T")
PhotoSource = bytes | str  # bytes to upload, or a file_id Telegram already has

_GONE = (
    "chat not found",
    "user not found",
    "bot was blocked",
    "user is deactivated",
    "bot was kicked",
    "bot can't initiate conversation",
    "bot is not a member",
    "not enough rights to send",
    "have no rights to send",
    "chat_write_forbidden",
)
_REPLY_MISSING = ("message to be replied not found", "reply message not found", "replied message not found")
_THREAD_MISSING = ("message thread not found", "topic_deleted", "topic_closed")
_TOO_LONG = ("too long", "message_too_long", "caption_too_long")
_PHOTO_TOO_BIG = (
    "photo_invalid_dimensions",
    "photo_save_file_invalid",
    "image_process_failed",
    "file is too big",
    "too large",
    "entity too large",
)
_BAD_FILE_ID = ("wrong file identifier", "wrong remote file identifier", "file reference", "invalid file id")
_MESSAGE_GONE = ("message to edit not found", "message can't be edited", "message to delete not found",
                 "message can't be deleted", "message_id_invalid")
_NOT_MODIFIED = "message is not modified"


class ChatGone(Exception):
    """The bot can no longer write to this chat (blocked, removed, chat deleted or never started)."""

    def __init__(self, chat_id: int | str, reason: str) -> None:
        super().__init__(f"chat {chat_id}: {reason}")
        self.chat_id = chat_id
        self.reason = reason


def _says(error: TelegramError, phrases: Sequence[str]) -> bool:
    text = error.message.lower()
    return any(phrase in text for phrase in phrases)


def is_gone(error: TelegramError) -> bool:
    return isinstance(error, Forbidden) or (isinstance(error, BadRequest) and _says(error, _GONE))


def is_bad_file_id(error: TelegramError) -> bool:
    return isinstance(error, BadRequest) and _says(error, _BAD_FILE_ID)


def is_photo_too_big(error: TelegramError) -> bool:
    # A 413 from the Bot API server surfaces as a NetworkError in PTB.
    return isinstance(error, BadRequest | NetworkError) and _says(error, _PHOTO_TOO_BIG)


def largest_file_id(message: Message) -> str | None:
    if not message.photo:
        return None
    return max(message.photo, key=lambda size: size.width * size.height).file_id


async def answer_query(query: CallbackQuery, text: str | None, alert: bool = False) -> None:
    """Answer a button press (a toast, or an alert); a press that can't be answered any more is only logged."""
    try:
        await query.answer(text, show_alert=alert)
    except BadRequest as error:
        # Already answered, or too old (a press queued while the bot was down): the work still follows.
        log.debug("telegram: answering callback query failed: %s", error)
    except TelegramError:
        log.warning("telegram: answering callback query failed", exc_info=True)


class Sender:
    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def _deliver(
        self,
        chat_id: int,
        reply_to: int | None,
        thread_id: int | None,
        send: Callable[[int, ReplyParameters | None, int | None], Awaitable[T]],
    ) -> T:
        """Call `send(chat_id, reply_parameters, thread_id)`, dropping what no longer exists and retrying."""
        migrated = False
        while True:
            reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
            try:
                return await send(chat_id, reply, thread_id)
            except ChatMigrated as error:  # a group became a supergroup: same chat, new id
                if migrated:
                    raise
                migrated, chat_id = True, int(error.new_chat_id)
            except TelegramError as error:
                if is_gone(error):
                    raise ChatGone(chat_id, error.message) from error
                # Each fix applies once: the value it drops is None afterwards.
                if isinstance(error, BadRequest) and reply_to and _says(error, _REPLY_MISSING):
                    reply_to = None
                elif isinstance(error, BadRequest) and thread_id and _says(error, _THREAD_MISSING):
                    thread_id = None
                else:
                    raise

    async def text(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        keyboard: InlineKeyboardMarkup | ForceReply | None = None,
    ) -> Message:
        body = fit(text, TEXT_LIMIT)

        async def send(chat: int, reply: ReplyParameters | None, thread: int | None) -> Message:
            nonlocal body
            try:
                return await self.bot.send_message(
                    chat, body, reply_parameters=reply, message_thread_id=thread, reply_markup=keyboard
                )
            except BadRequest as error:
                if not _says(error, _TOO_LONG) or len(body) < 64:
                    raise
                body = fit(body, len(body) // 2)
                return await self.bot.send_message(
                    chat, body, reply_parameters=reply, message_thread_id=thread, reply_markup=keyboard
                )

        return await self._deliver(chat_id, reply_to, thread_id, send)

    async def photo(
        self,
        chat_id: int,
        photo: PhotoSource,
        *,
        caption: str,
        filename: str,
        reply_to: int | None = None,
        thread_id: int | None = None,
        keyboard: InlineKeyboardMarkup | None = None,
    ) -> Message:
        sources = await self._prepared([photo])
        caption = fit(caption, CAPTION_LIMIT)

        async def send(chat: int, reply: ReplyParameters | None, thread: int | None) -> Message:
            async def attempt(items: list[PhotoSource], text: str) -> Message:
                return await self.bot.send_photo(
                    chat, items[0], caption=text, filename=filename, reply_parameters=reply,
                    message_thread_id=thread, reply_markup=keyboard,
                )

            return await self._with_photo_fixes(sources, caption, attempt)

        return await self._deliver(chat_id, reply_to, thread_id, send)

    async def album(
        self,
        chat_id: int,
        photos: Sequence[PhotoSource],
        *,
        caption: str,
        filenames: Sequence[str],
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> tuple[Message, ...]:
        """2–10 photos as one media group, the caption on the first. Albums can't carry buttons."""
        sources = await self._prepared(photos)
        caption = fit(caption, CAPTION_LIMIT)

        async def send(chat: int, reply: ReplyParameters | None, thread: int | None) -> tuple[Message, ...]:
            async def attempt(items: list[PhotoSource], text: str) -> tuple[Message, ...]:
                group = [
                    InputMediaPhoto(item, caption=text if i == 0 else None, filename=filenames[i])
                    for i, item in enumerate(items)
                ]
                return await self.bot.send_media_group(
                    chat, group, reply_parameters=reply, message_thread_id=thread
                )

            return await self._with_photo_fixes(sources, caption, attempt)

        return await self._deliver(chat_id, reply_to, thread_id, send)

    async def documents(
        self,
        chat_id: int,
        files: Sequence[tuple[bytes, str]],
        *,
        caption: str = "",
        reply_to: int | None = None,
        thread_id: int | None = None,
    ) -> None:
        """Files sent as documents, untouched (one message, or a document album of 2–10)."""
        caption = fit(caption, CAPTION_LIMIT)

        async def send(chat: int, reply: ReplyParameters | None, thread: int | None) -> None:
            if len(files) == 1:
                data, name = files[0]
                await self.bot.send_document(
                    chat, data, filename=name, caption=caption or None, reply_parameters=reply,
                    message_thread_id=thread,
                )
                return
            for start in range(0, len(files), 10):
                group = [
                    InputMediaDocument(data, filename=name, caption=caption if start == i == 0 and caption else None)
                    for i, (data, name) in enumerate(files[start : start + 10])
                ]
                await self.bot.send_media_group(chat, group, reply_parameters=reply, message_thread_id=thread)

        await self._deliver(chat_id, reply_to, thread_id, send)

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, keyboard: InlineKeyboardMarkup | None = None
    ) -> bool:
        """Edit a message's text; False when that message no longer exists (or can't be edited)."""
        try:
            await self.bot.edit_message_text(fit(text, TEXT_LIMIT), chat_id, message_id, reply_markup=keyboard)
        except TelegramError as error:
            if is_gone(error):
                raise ChatGone(chat_id, error.message) from error
            if isinstance(error, BadRequest) and _says(error, (_NOT_MODIFIED,)):
                return True
            if isinstance(error, BadRequest) and _says(error, _MESSAGE_GONE):
                return False
            raise
        return True

    async def drop_keyboard(self, chat_id: int, message_id: int) -> None:
        """Best effort: the buttons of an old message (e.g. a history page already turned) go away."""
        try:
            await self.bot.edit_message_reply_markup(chat_id, message_id, reply_markup=None)
        except TelegramError as error:
            log.debug("telegram: dropping buttons of %s/%s failed: %s", chat_id, message_id, error)

    async def delete(self, chat_id: int, message_id: int) -> bool:
        """Delete a message; False when Telegram won't (already gone, too old, no right)."""
        try:
            return await self.bot.delete_message(chat_id, message_id)
        except TelegramError as error:
            if isinstance(error, BadRequest | Forbidden):
                return False
            raise

    async def action(self, chat_id: int, thread_id: int | None = None) -> None:
        try:
            await self.bot.send_chat_action(chat_id, ChatAction.UPLOAD_PHOTO, message_thread_id=thread_id)
        except TelegramError as error:
            if is_gone(error):
                raise ChatGone(chat_id, error.message) from error
            if isinstance(error, BadRequest) and thread_id and _says(error, _THREAD_MISSING):
                await self.bot.send_chat_action(chat_id, ChatAction.UPLOAD_PHOTO)
                return
            raise

    # --- photos ------------------------------------------------------------------------------

    async def _prepared(self, photos: Sequence[PhotoSource]) -> list[PhotoSource]:
        """Uploads that can't be photos as they are (too big, extreme sides) are re-encoded up front."""
        prepared: list[PhotoSource] = []
        for photo in photos:
            if isinstance(photo, bytes):
                photo = await asyncio.to_thread(media.prepare_photo, photo)
            prepared.append(photo)
        return prepared

    async def _with_photo_fixes(
        self,
        sources: list[PhotoSource],
        caption: str,
        attempt: Callable[[list[PhotoSource], str], Awaitable[T]],
    ) -> T:
        """Send; if Telegram refuses a photo as too big, shrink the uploads and try again; if the caption
        is too long, cut it."""
        step = 0
        while True:
            try:
                return await attempt(sources, caption)
            except TelegramError as error:
                if is_photo_too_big(error) and step < 3 and any(isinstance(s, bytes) for s in sources):
                    log.info("telegram: photo refused as too big (%s), re-encoding (step %d)", error.message, step)
                    shrunk: list[PhotoSource] = []
                    for source in sources:
                        if isinstance(source, bytes):
                            source = await asyncio.to_thread(media.shrink_for_photo, source, step)
                        shrunk.append(source)
                    sources = shrunk
                    step += 1
                elif isinstance(error, BadRequest) and _says(error, _TOO_LONG) and len(caption) > 64:
                    caption = fit(caption, len(caption) // 2)
                else:
                    raise
