"""Durable intake for Telegram: every update is written into the inbox before Telegram is told it arrived
(the next getUpdates offset, the webhook's 200), and handled once.

- `fetched` is called by our bot's get_updates on each polled batch, `record` by the webhook on each body
  (one statement each); if the database can't take them, they are not confirmed and Telegram sends them
  again, to be handled once the database is back.
- `OncePerUpdate` wraps the application's update processor: an update is claimed before its handlers run
  and marked handled after, so one arriving twice (redelivered, replayed) is handled once.
- `start` replays what an earlier process recorded but never handled, then keeps sweeping for updates whose
  claim ran out (their handler's process died), so each recorded update is handled at least once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any

from telegram import Bot, Update
from telegram.ext import Application, BaseUpdateProcessor

from bot.adapters.telegram.context import PLATFORM
from bot.core.inbox import Inbox

log = logging.getLogger(__name__)

RECORD_RETRY_SECONDS = 1.0


class TelegramIntake:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._sweeper: asyncio.Task[None] | None = None

    async def record(self, updates: Sequence[Update]) -> None:
        """Write the updates down in one statement (raises if the database can't take them)."""
        if updates:
            await self.inbox.record(PLATFORM, [(str(u.update_id), u.to_dict()) for u in updates])

    async def fetched(self, updates: Sequence[Update]) -> Sequence[Update]:
        """A polled batch, recorded: what PTB may queue and confirm. Nothing if it couldn't be written: the
        offset then stays where it was and Telegram sends the same updates again (after a pause, so that a
        database outage doesn't turn polling into a tight loop)."""
        try:
            await self.record(updates)
        except Exception as error:
            log.warning("telegram: %d updates not recorded (%r); fetching them again", len(updates), error)
            await asyncio.sleep(RECORD_RETRY_SECONDS)
            return ()
        return updates

    async def claim(self, update: object) -> bool:
        """True if this process is to handle the update now. Not while the database can't say: the update
        stays recorded and the sweep hands it out again."""
        if not isinstance(update, Update):
            return True  # nothing of ours is queued but updates; anything else is not from Telegram
        try:
            return await self.inbox.claim(PLATFORM, str(update.update_id))
        except Exception:
            log.warning("telegram: update %s not claimed (database unavailable); retried later", update.update_id)
            return False

    async def handled(self, update: object) -> None:
        if not isinstance(update, Update):
            return
        try:
            await self.inbox.handled(PLATFORM, str(update.update_id))
        except Exception:
            # The claim runs out and the update is handled again: harmless, handling is idempotent.
            log.warning("telegram: update %s not marked handled (database unavailable)", update.update_id)

    async def start(self, application: Application) -> None:
        """Queue what the inbox holds unhandled (before new updates are fetched), then keep sweeping."""
        await self._replay(application, older_than=0.0)
        self._sweeper = asyncio.create_task(self._sweep(application), name="telegram-inbox-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self, application: Application) -> None:
        # Updates claimed by a process that died are free again once the claim runs out. Only those older
        # than a claim are taken: younger ones are most likely still in this process's queue.
        every = self.inbox.claim_seconds
        while True:
            await asyncio.sleep(every)
            try:
                await self._replay(application, older_than=every)
            except Exception:
                log.warning("telegram: the inbox could not be read; trying again later", exc_info=True)

    async def _replay(self, application: Application, older_than: float) -> None:
        now = datetime.now(UTC)
        for event in await self.inbox.unhandled(PLATFORM):
            if (now - event.received_at).total_seconds() < older_than:
                continue
            update = _parse(event.payload, application.bot)
            if update is None:
                continue
            log.info("telegram: handling update %s recorded before a restart", event.event_id)
            await application.update_queue.put(update)


class OncePerUpdate(BaseUpdateProcessor):
    """Runs each update through `inner` (which decides how many run at once) if this process claims it."""

    def __init__(self, inner: BaseUpdateProcessor, intake: TelegramIntake) -> None:
        # PTB's gate (process_update, final) is this processor's, as wide as the inner one's; the inner
        # one's do_process_update then applies its own slots.
        super().__init__(inner.max_concurrent_updates)
        self.inner = inner
        self.intake = intake

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        await self.inner.do_process_update(update, self._once(update, coroutine))

    async def _once(self, update: object, coroutine: Awaitable[Any]) -> None:
        if not await self.intake.claim(update):
            if asyncio.iscoroutine(coroutine):
                coroutine.close()
            return
        await coroutine  # PTB's process_update: handler errors go to the error handler, not here
        await self.intake.handled(update)

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def shutdown(self) -> None:
        await self.inner.shutdown()


def _parse(payload: Any, bot: Bot) -> Update | None:
    try:
        return Update.de_json(payload, bot)
    except Exception:
        log.warning("telegram: a recorded update could not be read back; skipped", exc_info=True)
        return None
