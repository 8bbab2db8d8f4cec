"""How a job looks in a Telegram chat: one status message (queued → generating, edited sparingly), the
`upload_photo` chat action while it works, then the result: a photo carrying the buttons, or an album
followed by one message carrying them (albums can't have buttons).

Everything needed to deliver lives in the job's Destination (stored with it), so a job accepted before a
restart is delivered after it. The only memory kept here is short-lived: the running chat-action loops,
preview messages, and a handshake between on_queued and the worker's first event (below)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from telegram import InputMediaPhoto
from telegram.error import TelegramError

from bot.adapters.parts import UnrecordedParts
from bot.adapters.telegram import buttons, render
from bot.adapters.telegram.context import PLATFORM, ReplyContext
from bot.adapters.telegram.sending import ChatGone, PhotoSource, Sender, largest_file_id
from bot.core.events import DeliveredParts, DeliveryReceipt
from bot.core.models import Generation, ImageFile
from bot.core.service import GenerationService
from bot.core.storage.base import EXTENSIONS

log = logging.getLogger(__name__)

# A result's parts (see bot.core.jobs.receipts): a single image is one photo carrying the buttons; more are
# an album, then a message under it carrying them (albums can't have buttons).
PHOTO = "photo"
ALBUM = "album"
BUTTONS = "buttons"


@dataclass(frozen=True)
class ProgressTiming:
    # sendChatAction shows for at most 5 s: refresh a little before it lapses.
    chat_action_every: float = 4.0
    # Edits count against flood limits (20 messages a minute in a group): the elapsed time is refreshed
    # rarely, and a streamed preview at most this often.
    status_edit_every: float = 20.0
    preview_every: float = 10.0
    # Stop refreshing even if no final event ever comes (a job lost in a crash).
    give_up_after: float = 900.0
    # How long the first worker event waits for on_queued's status message (see _StatusHandshake).
    status_wait: float = 5.0


@dataclass(frozen=True)
class _Preview:
    chat_id: int
    message_id: int
    shown_at: float


def photo_filename(job: Generation, image: ImageFile) -> str:
    return f"{job.id}-{image.record.index + 1}.{EXTENSIONS.get(image.record.mime_type, 'png')}"


def photo_source(image: ImageFile) -> PhotoSource:
    """A file_id Telegram already has (a retried delivery) costs no upload; otherwise the bytes."""
    return image.record.file_refs.get(PLATFORM) or image.data


class TelegramObserver:
    """The core's JobObserver for Telegram."""

    platform = PLATFORM

    def __init__(self, sender: Sender, service: GenerationService, timing: ProgressTiming | None = None) -> None:
        self.sender = sender
        self.service = service
        self.timing = timing or ProgressTiming()
        # The core sends on_queued and only then stores the status message's id, while the worker may
        # already have claimed the job: later events wait here (briefly) for that id.
        self._status: dict[str, asyncio.Future[int | None]] = {}
        self._announced: set[str] = set()  # jobs whose on_queued ran in this process
        self._activity: dict[str, asyncio.Task[None]] = {}
        self._previews: dict[str, _Preview] = {}
        self._closed = False

    # --- JobObserver -------------------------------------------------------------------------

    async def on_queued(self, job: Generation, position: int) -> str | None:
        self._announced.add(job.id)
        handshake = self._handshake(job.id)
        message_id: int | None = None
        try:
            at = ReplyContext.from_job(job)
            message = await self.sender.text(
                at.chat_id,
                render.queued_text(job, position),
                reply_to=at.reply_to,
                thread_id=at.thread_id,
                keyboard=buttons.cancel_keyboard(job),
            )
            message_id = message.message_id
        except ChatGone as gone:
            log.info("job %s: chat gone before queueing notice (%s)", job.id, gone.reason)
        finally:
            if not handshake.done():
                handshake.set_result(message_id)
        return str(message_id) if message_id is not None else None

    async def on_started(self, job: Generation) -> None:
        # Never makes the worker wait: the status edit and the chat action run in their own task.
        self._start_activity(job, ReplyContext.from_job(job))

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        now = asyncio.get_running_loop().time()
        shown = self._previews.get(job.id)
        if shown is not None and now - shown.shown_at < self.timing.preview_every:
            return  # sparingly: most previews are skipped
        at = ReplyContext.from_job(job)
        filename = f"{job.id}-preview.{EXTENSIONS.get(mime_type, 'png')}"
        try:
            if shown is None:
                message = await self.sender.photo(
                    at.chat_id, image, caption="Preview…", filename=filename,
                    reply_to=at.reply_to, thread_id=at.thread_id,
                )
                self._previews[job.id] = _Preview(at.chat_id, message.message_id, now)
            else:
                await self.sender.bot.edit_message_media(
                    InputMediaPhoto(image, caption="Preview…", filename=filename), at.chat_id, shown.message_id
                )
                self._previews[job.id] = _Preview(at.chat_id, shown.message_id, now)
        except ChatGone:
            self._stop_activity(job.id)
        except TelegramError as error:  # e.g. the preview was deleted: the final result still comes
            log.debug("job %s: preview not shown: %s", job.id, error)

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        # The core delivers images through on_completed_in_parts; this is for callers without receipts.
        return await self.on_completed_in_parts(job, images, UnrecordedParts())

    async def on_completed_in_parts(
        self, job: Generation, images: Sequence[ImageFile], parts: DeliveredParts
    ) -> DeliveryReceipt | None:
        """The photo (or the album, then the message carrying its buttons), each recorded as a part as soon
        as Telegram accepts it: delivering again (after a crash, a failed buttons message) posts only what
        has no receipt."""
        self._stop_activity(job.id)
        at = ReplyContext.from_job(job)
        status_id = await self._status_id(job)
        ordered = sorted(images, key=lambda image: image.record.index)
        if not ordered:  # cannot happen for succeeded/partial; show something rather than nothing
            await self._final_text(job, at, status_id, render.failed_text(job), None)
            return DeliveryReceipt()
        records = [image.record for image in ordered]
        keyboard = buttons.result_keyboard(job, records)
        try:
            if len(ordered) == 1:
                if PHOTO not in parts.sent:
                    message = await self.sender.photo(
                        at.chat_id, photo_source(ordered[0]),
                        caption=render.result_caption(job, records, at.in_group),
                        filename=photo_filename(job, ordered[0]), reply_to=at.reply_to, thread_id=at.thread_id,
                        keyboard=keyboard,
                    )
                    await parts.record(PHOTO, str(message.message_id), _refs(ordered, [message]))
            else:
                if ALBUM not in parts.sent:
                    messages = await self.sender.album(
                        at.chat_id, [photo_source(image) for image in ordered],
                        caption=render.result_caption(job, records, at.in_group),
                        filenames=[photo_filename(job, image) for image in ordered],
                        reply_to=at.reply_to, thread_id=at.thread_id,
                    )
                    await parts.record(ALBUM, str(messages[0].message_id), _refs(ordered, messages))
                if BUTTONS not in parts.sent:
                    album_id = parts.sent[ALBUM].message_id
                    under_album = await self.sender.text(
                        at.chat_id, render.album_buttons_text(job, records),
                        reply_to=int(album_id) if album_id else None, thread_id=at.thread_id, keyboard=keyboard,
                    )
                    await parts.record(BUTTONS, str(under_album.message_id))
        except ChatGone as gone:
            # Permanent: the images are in the user's history; retrying would only fail again.
            log.info("job %s: not delivered, chat %s is gone (%s)", job.id, at.chat_id, gone.reason)
            await self._forget(job.id)
            return parts.receipt()
        await self._retire_status(job, at, status_id)
        await self._forget(job.id)
        return DeliveryReceipt(message_id=parts.sent[BUTTONS if len(ordered) > 1 else PHOTO].message_id,
                               file_refs=parts.receipt().file_refs)

    async def on_failed(self, job: Generation) -> None:
        self._stop_activity(job.id)
        at = ReplyContext.from_job(job)
        keyboard = buttons.retry_keyboard(job)
        await self._final_text(job, at, await self._status_id(job), render.failed_text(job), keyboard)
        await self._forget(job.id)

    async def on_cancelled(self, job: Generation) -> None:
        self._stop_activity(job.id)
        at = ReplyContext.from_job(job)
        await self._final_text(job, at, await self._status_id(job), render.cancelled_text(job), None)
        await self._forget(job.id)

    # --- the status message ------------------------------------------------------------------

    def _handshake(self, job_id: str) -> asyncio.Future[int | None]:
        return self._status.setdefault(job_id, asyncio.get_running_loop().create_future())

    async def _status_id(self, job: Generation, *, expect_announcement: bool = False) -> int | None:
        """The status message's id: stored with the job, or about to be (on_queued still sending it).
        A job queued before a restart, or by another process, has none to wait for; `expect_announcement`
        waits anyway (the worker may have started the job before on_queued even began)."""
        at = ReplyContext.from_job(job)
        if at.album_id is not None:  # an album was delivered: destination.message_id moved on
            return at.status_id
        if job.destination.message_id is not None:
            return int(job.destination.message_id)
        if job.id not in self._announced and not expect_announcement:
            return None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._handshake(job.id)), self.timing.status_wait)
        return None

    async def _edit_or_forget(self, at: ReplyContext, status_id: int, text: str, keyboard: Any) -> bool:
        try:
            return await self.sender.edit_text(at.chat_id, status_id, text, keyboard)
        except ChatGone:
            return False

    async def _final_text(
        self, job: Generation, at: ReplyContext, status_id: int | None, text: str, keyboard: Any
    ) -> None:
        """The status message becomes the outcome; if it is gone, the outcome is a new message."""
        try:
            if status_id is not None and await self.sender.edit_text(at.chat_id, status_id, text, keyboard):
                return
            await self.sender.text(at.chat_id, text, reply_to=at.reply_to, thread_id=at.thread_id, keyboard=keyboard)
        except ChatGone as gone:
            log.info("job %s: outcome not shown, chat %s is gone (%s)", job.id, at.chat_id, gone.reason)

    async def _retire_status(self, job: Generation, at: ReplyContext, status_id: int | None) -> None:
        """The result is posted: the status message (with its cancel button) goes away, or, if Telegram
        won't delete it (too old), says it is done."""
        if status_id is None:
            return
        try:
            if not await self.sender.delete(at.chat_id, status_id):
                await self.sender.edit_text(at.chat_id, status_id, render.done_text(job))
        except Exception:  # cosmetic: never fail a delivery over it
            log.warning("job %s: could not retire status message", job.id, exc_info=True)

    # --- working indicators --------------------------------------------------------------------

    def _start_activity(self, job: Generation, at: ReplyContext) -> None:
        if self._closed or job.id in self._activity:
            return
        task = asyncio.create_task(self._keep_busy(job, at), name=f"telegram-activity-{job.id}")
        self._activity[job.id] = task
        task.add_done_callback(lambda done: self._activity_ended(job.id, done))

    def _activity_ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._activity.get(job_id) is task:
            del self._activity[job_id]

    def _stop_activity(self, job_id: str) -> None:
        task = self._activity.pop(job_id, None)
        if task is not None:
            task.cancel()

    async def _keep_busy(self, job: Generation, at: ReplyContext) -> None:
        """While the job runs: the upload_photo action every few seconds, and the status message says
        "generating", then rarely how long it has taken."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.sender.action(at.chat_id, at.thread_id)
            status_id = await self._status_id(job, expect_announcement=True)
            if status_id is not None:
                await self._edit_or_forget(at, status_id, render.generating_text(job), buttons.cancel_keyboard(job))
            last_edit = loop.time()
            while loop.time() - started < self.timing.give_up_after:
                await asyncio.sleep(self.timing.chat_action_every)
                await self.sender.action(at.chat_id, at.thread_id)
                now = loop.time()
                if status_id is not None and now - last_edit >= self.timing.status_edit_every:
                    last_edit = now
                    text = render.generating_text(job, now - started)
                    await self._edit_or_forget(at, status_id, text, buttons.cancel_keyboard(job))
        except ChatGone:
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only an indicator: a hiccup ends it quietly rather than bothering the job.
            log.debug("job %s: chat action loop ended", job.id, exc_info=True)

    async def _forget(self, job_id: str) -> None:
        self._status.pop(job_id, None)
        preview = self._previews.pop(job_id, None)
        self._announced.discard(job_id)
        if preview is not None:
            with contextlib.suppress(Exception):  # cosmetic
                await self.sender.delete(preview.chat_id, preview.message_id)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._activity.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._activity.clear()


def _refs(images: Sequence[ImageFile], messages: Sequence[Any]) -> dict[str, str]:
    """image id -> file_id of the photo Telegram stored, so history resends it without uploading."""
    refs = {}
    for image, message in zip(images, messages, strict=False):
        file_id = largest_file_id(message)
        if file_id:
            refs[image.record.id] = file_id
    return refs
