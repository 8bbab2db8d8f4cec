"""The core's job events, shown on Discord.

While the interaction token lives (15 minutes) every event edits the message the interaction created
(the "thinking…" response): queued → generating → the images. After that, or when the token stops working,
the result goes out as an ordinary channel message (or a DM if the channel refuses us).

Errors: a transient platform error in a final delivery is raised, so the core retries it later; a permanent
one (no access, unknown channel, closed DMs) is logged and the job counts as delivered. Progress updates
are best effort."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import discord

from bot.adapters.discord import buttons, internals, media, render
from bot.adapters.discord.context import DEFAULT_UPLOAD_LIMIT, PLATFORM, ReplyContext
from bot.adapters.parts import UnrecordedParts
from bot.core.events import DeliveredParts, DeliveryReceipt
from bot.core.models import Generation, ImageFile, ImageRecord

log = logging.getLogger(__name__)

# Stages of a job's message, in order: an event never overwrites a later one (events can race: the worker
# may start a job while the "queued" edit is still on its way).
_QUEUED, _STARTED, _PREVIEW, _FINAL = range(4)
_REMEMBERED_JOBS = 5000
# Discord's codes meaning "this token or message can't be used any more": fall back to the channel.
_TOKEN_GONE_CODES = frozenset({10008, 10015, 50027})  # unknown message, unknown webhook, invalid webhook token
_PAYLOAD_TOO_LARGE = 413
# A result's parts (see bot.core.jobs.receipts): the first message (the deferred one edited, or the first
# posted in the channel or DM), with the caption and buttons, then one part per follow-up message.
FIRST = "first"
_FIT_ATTEMPTS = 3


class _TokenUnusable(Exception):
    pass


def is_permanent(error: discord.HTTPException) -> bool:
    """A 4xx other than 429 won't get better by retrying (missing access, unknown channel...)."""
    return 400 <= error.status < 500 and error.status != 429


def _token_gone(error: discord.HTTPException) -> bool:
    return error.status == 401 or error.code in _TOKEN_GONE_CODES


class DiscordObserver:
    platform = PLATFORM

    def __init__(
        self, client: discord.Client, clock: Callable[[], float] = time.time, preview_interval: float = 5.0
    ) -> None:
        self.client = client
        self.clock = clock  # wall-clock seconds; replaceable so a test can age interaction tokens
        self.preview_interval = preview_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._stages: OrderedDict[str, int] = OrderedDict()
        self._last_preview: dict[str, float] = {}

    # --- progress ------------------------------------------------------------------------------

    async def on_queued(self, job: Generation, position: int) -> str | None:
        await self._progress(job, _QUEUED, render.queued_text(job, position))
        return job.destination.message_id

    async def on_started(self, job: Generation) -> None:
        await self._progress(job, _STARTED, render.started_text(job))

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        # Edits are rate limited per channel: a preview at most every few seconds, and none queued up.
        now = time.monotonic()
        if now - self._last_preview.get(job.id, float("-inf")) < self.preview_interval or self._lock(job.id).locked():
            return
        self._last_preview[job.id] = now
        context = ReplyContext.from_destination(job.destination)
        limit = context.upload_limit if context else DEFAULT_UPLOAD_LIMIT
        preview = ImageFile(_preview_record(job, mime_type), image)
        fitted = await asyncio.to_thread(media.fit_images, [preview], limit, "preview")
        files = [u.file() for group in fitted.messages for u in group][:1]
        await self._progress(job, _PREVIEW, render.started_text(job), attachments=files)

    async def _progress(
        self, job: Generation, stage: int, content: str, attachments: Sequence[discord.File] | None = None
    ) -> None:
        context = ReplyContext.from_destination(job.destination)
        message_id = job.destination.message_id
        if context is None or message_id is None or not context.token_alive(self.clock()):
            # Without a live token, progress isn't worth new channel messages: the result will be one.
            return
        async with self._lock(job.id):
            if not self._advance(job.id, stage):
                return
            extra: dict[str, Any] = {"attachments": list(attachments)} if attachments is not None else {}
            try:
                await self._webhook(context).edit_message(
                    int(message_id), content=content, view=buttons.cancel_view(job), **extra
                )
            except discord.HTTPException as error:
                log.warning("job %s: progress update failed: %s %s", job.id, error.status, error.text)

    # --- outcomes ------------------------------------------------------------------------------

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        return await self.on_completed_in_parts(job, images, UnrecordedParts())

    async def on_completed_in_parts(
        self, job: Generation, images: Sequence[ImageFile], parts: DeliveredParts
    ) -> DeliveryReceipt | None:
        """The images in one message or more (the first carries the caption and buttons: the deferred
        message edited, or a channel message; then follow-ups), each recorded as a part as soon as Discord
        accepts it: delivering again posts only the messages without a receipt."""
        async with self._final(job):
            context = ReplyContext.from_destination(job.destination)
            limit = context.upload_limit if context else DEFAULT_UPLOAD_LIMIT
            for attempt in range(_FIT_ATTEMPTS):
                fitted = await asyncio.to_thread(media.fit_images, images, limit)
                try:
                    message_id = await self._post_result(job, context, images, fitted, parts)
                except discord.HTTPException as error:
                    if error.status == _PAYLOAD_TOO_LARGE and attempt + 1 < _FIT_ATTEMPTS:
                        # The channel allows less than the interaction said: shrink harder, never give up silently.
                        limit //= 2
                        log.info("job %s: upload refused as too large; retrying under %d bytes", job.id, limit)
                        continue
                    if is_permanent(error):
                        log.error("job %s: images could not be delivered: %s %s", job.id, error.status, error.text)
                        return None
                    raise
                return DeliveryReceipt(message_id=message_id)
            return None

    async def on_failed(self, job: Generation) -> None:
        async with self._final(job):
            await self._tell_outcome(job, render.failed_text(job), ephemeral=True)

    async def on_cancelled(self, job: Generation) -> None:
        async with self._final(job):
            await self._tell_outcome(job, render.cancelled_text(job), ephemeral=False)

    # --- delivery paths ------------------------------------------------------------------------

    async def _post_result(
        self,
        job: Generation,
        context: ReplyContext | None,
        images: Sequence[ImageFile],
        fitted: media.FittedImages,
        parts: DeliveredParts,
    ) -> str | None:
        shown = {u.index for group in fitted.messages for u in group}
        records = [i.record for i in images if i.record.index in shown]
        caption = render.result_caption(job, records, fitted.notes())
        view = buttons.result_view(job, records)
        groups = fitted.messages or [[]]  # nothing uploadable: still say so (the note explains)
        if context is not None and job.destination.message_id and context.token_alive(self.clock()):
            try:
                return await self._post_with_token(job, context, caption, groups, view, parts)
            except _TokenUnusable as reason:
                log.info("job %s: interaction token unusable (%s); posting in the channel", job.id, reason)
        return await self._post_in_channel(job, context, caption, groups, view, parts)

    async def _post_with_token(
        self,
        job: Generation,
        context: ReplyContext,
        caption: str,
        groups: list[list[media.Upload]],
        view: discord.ui.View,
        parts: DeliveredParts,
    ) -> str | None:
        assert job.destination.message_id is not None
        webhook = self._webhook(context)
        if FIRST not in parts.sent:
            try:
                first = await webhook.edit_message(
                    int(job.destination.message_id), content=caption, attachments=[u.file() for u in groups[0]],
                    view=view,
                )
            except discord.HTTPException as error:
                if _token_gone(error):
                    raise _TokenUnusable(f"{error.status} {error.code}") from error
                raise
            await parts.record(FIRST, str(first.id))
        for index, group in _more(groups, parts):
            sent = await webhook.send(content=_continued(group), files=[u.file() for u in group], wait=True)
            await parts.record(_more_part(index), str(sent.id))
        return parts.sent[FIRST].message_id

    async def _post_in_channel(
        self,
        job: Generation,
        context: ReplyContext | None,
        caption: str,
        groups: list[list[media.Upload]],
        view: discord.ui.View,
        parts: DeliveredParts,
    ) -> str | None:
        channel = self.client.get_partial_messageable(int(job.destination.chat_id))
        try:
            await _send_parts(channel, caption, groups, view, parts)
        except (discord.Forbidden, discord.NotFound) as error:
            if context is not None and context.dm:
                log.error("job %s: the DM itself refused the images (%s)", job.id, error.code)
                return None
            log.warning(
                "job %s: can't post in channel %s (%s); trying a DM", job.id, job.destination.chat_id, error.code
            )
            return await self._post_in_dm(job, caption, groups, view, parts)
        await self._retire_status(job, "⤵ Your images are below.")
        return parts.sent[FIRST].message_id

    async def _post_in_dm(
        self, job: Generation, caption: str, groups: list[list[media.Upload]], view: discord.ui.View,
        parts: DeliveredParts,
    ) -> str | None:
        note = f"I couldn't post in <#{job.destination.chat_id}> (missing permission there), so here they are.\n"
        try:
            dm = await self.client.create_dm(discord.Object(int(job.owner.platform_user_id)))
            content = (note + caption)[: render.MESSAGE_LIMIT]
            await _send_parts(dm, content, groups, view, parts)
        except (discord.Forbidden, discord.NotFound) as error:
            log.error("job %s: no way to deliver to %s: %s", job.id, job.owner.platform_user_id, error)
            return None
        return parts.sent[FIRST].message_id

    async def _tell_outcome(self, job: Generation, text: str, *, ephemeral: bool) -> None:
        """A job that made no images. With a live token: told to the requester only (ephemeral), or shown
        in the status message. Without one: a failure pings its owner in the channel (they may have waited
        long), a cancellation (its owner just pressed ✖ and was answered) only updates the status message."""
        context = ReplyContext.from_destination(job.destination)
        message_id = job.destination.message_id
        if context is not None and message_id is not None and context.token_alive(self.clock()):
            webhook = self._webhook(context)
            try:
                if ephemeral:
                    # Settle a possibly still "thinking" response first: Discord would otherwise turn the
                    # ephemeral followup into that public message.
                    await webhook.edit_message(int(message_id), content="…", view=None, attachments=[])
                    await webhook.send(text, ephemeral=True, wait=True)
                    with contextlib.suppress(discord.HTTPException):
                        await webhook.delete_message(int(message_id))
                else:
                    await webhook.edit_message(int(message_id), content=text, view=None, attachments=[])
                return
            except discord.HTTPException as error:
                if not _token_gone(error):
                    self._raise_if_transient(job, error)
                    return
        if not ephemeral:
            await self._retire_status(job, text)
            return
        owner = int(job.owner.platform_user_id)
        mention = discord.AllowedMentions(users=[discord.Object(owner)])
        try:
            channel = self.client.get_partial_messageable(int(job.destination.chat_id))
            try:
                await channel.send(f"<@{owner}> {text}", allowed_mentions=mention)
            except (discord.Forbidden, discord.NotFound):
                if context is not None and context.dm:
                    raise
                await (await self.client.create_dm(discord.Object(owner))).send(text)
        except discord.HTTPException as error:
            self._raise_if_transient(job, error)
        await self._retire_status(job, None)

    async def _retire_status(self, job: Generation, text: str | None) -> None:
        """Best effort, with the bot's own rights: point the stale status message at the result, or remove it."""
        if job.destination.message_id is None:
            return
        message = self.client.get_partial_messageable(int(job.destination.chat_id)).get_partial_message(
            int(job.destination.message_id)
        )
        with contextlib.suppress(discord.HTTPException):
            if text is None:
                await message.delete()
            else:
                await message.edit(content=text, view=None)

    @staticmethod
    def _raise_if_transient(job: Generation, error: discord.HTTPException) -> None:
        if not is_permanent(error):
            raise error
        log.warning("job %s: outcome could not be shown: %s %s", job.id, error.status, error.text)

    # --- plumbing ------------------------------------------------------------------------------

    def _webhook(self, context: ReplyContext) -> discord.Webhook:
        return internals.interaction_webhook(context.application_id, context.token, self.client)

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _advance(self, job_id: str, stage: int) -> bool:
        if self._stages.get(job_id, -1) > stage:
            return False
        self._stages[job_id] = stage
        self._stages.move_to_end(job_id)
        while len(self._stages) > _REMEMBERED_JOBS:
            self._stages.popitem(last=False)
        return True

    @contextlib.asynccontextmanager
    async def _final(self, job: Generation) -> AsyncIterator[None]:
        async with self._lock(job.id):
            self._advance(job.id, _FINAL)
            try:
                yield
            finally:
                self._locks.pop(job.id, None)
                self._last_preview.pop(job.id, None)


def _continued(group: Sequence[media.Upload]) -> str:
    numbers = ", ".join(str(u.index + 1) for u in group)
    return f"-# continued: image {numbers}"


def _preview_record(job: Generation, mime_type: str) -> ImageRecord:
    return ImageRecord(
        id="preview",
        generation_id=job.id,
        index=0,
        storage_key="",
        url="",
        mime_type=mime_type,
        width=0,
        height=0,
        bytes=0,
        seed=None,
        file_refs={},
    )


def _more_part(index: int) -> str:
    return f"more-{index}"


def _more(groups: list[list[media.Upload]], parts: DeliveredParts) -> list[tuple[int, list[media.Upload]]]:
    """The follow-up messages still to post: those without a receipt."""
    return [(index, group) for index, group in enumerate(groups[1:], 1) if _more_part(index) not in parts.sent]


async def _send_parts(
    target: discord.abc.Messageable, content: str, groups: list[list[media.Upload]], view: discord.ui.View,
    parts: DeliveredParts,
) -> None:
    """The first message (caption, buttons) and the follow-ups, each recorded as it is accepted; parts with
    a receipt are not posted again."""
    if FIRST not in parts.sent:
        first = await target.send(content, files=[u.file() for u in groups[0]], view=view)
        await parts.record(FIRST, str(first.id))
    for index, group in _more(groups, parts):
        sent = await target.send(_continued(group), files=[u.file() for u in group])
        await parts.record(_more_part(index), str(sent.id))
