"""Status messages on their way: the worker is woken before a job's status message is posted (a job should
not wait for a chat round trip), so a job may finish first. Its result is not shown before the status
message's id is known and stored, or the front end could not retire that message ("⏳ Queued" forever)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from bot.core.models import Generation

log = logging.getLogger(__name__)

# How long showing a result waits for its status message; past that it is shown without (a hung chat).
ANNOUNCE_WAIT_SECONDS = 15.0


class Announcements:
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[str | None]] = {}

    def begin(self, generation_id: str) -> None:
        """The job's status message is about to be posted (before the worker can see the job)."""
        self._pending[generation_id] = asyncio.get_running_loop().create_future()

    def end(self, generation_id: str, message_id: str | None) -> None:
        """Posted and its id stored (None: no status message)."""
        pending = self._pending.pop(generation_id, None)
        if pending is not None and not pending.done():
            pending.set_result(message_id)

    async def settled(self, generation: Generation) -> Generation:
        """The job once its status message is posted and stored, with that message's id."""
        pending = self._pending.get(generation.id)
        if pending is None:
            return generation
        try:
            message_id = await asyncio.wait_for(asyncio.shield(pending), ANNOUNCE_WAIT_SECONDS)
        except TimeoutError:
            log.warning("job %s: shown before its status message was posted", generation.id)
            return generation
        if message_id is None:
            return generation
        return dataclasses.replace(
            generation, destination=dataclasses.replace(generation.destination, message_id=message_id)
        )
