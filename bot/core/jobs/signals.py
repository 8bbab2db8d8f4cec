"""Word between processes about jobs, by Postgres NOTIFY.

- A job accepted by a process that runs no jobs (a front end of its own, `--only telegram`) wakes the
  workers in the other processes at once, instead of at their next poll.
- A job cancelled in one process stops in the process running it (the database already says it ended
  and refunded it; this spares the provider call).

Heard on one connection per process that runs jobs, taken again after a drop. What is said while no one
listens is missed, and nothing depends on it: workers still poll for jobs, and a cancelled job's run
records nothing over the cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence

import asyncpg

from bot.core.batches import GroupedWriter
from bot.core.listening import Connection, Heard, listen_forever

log = logging.getLogger(__name__)

CHANNEL = "image_jobs"
NEW_JOB = json.dumps({"new": True})


class JobSignals:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._said: GroupedWriter[str, None] = GroupedWriter(self._notify)
        self._listening: asyncio.Task[None] | None = None
        self.listening = False  # this process hears the others now

    # --- saying ----------------------------------------------------------------------------------

    def new_job(self) -> None:
        self._say(NEW_JOB)

    def abort(self, generation_id: str) -> None:
        self._say(json.dumps({"abort": generation_id}))

    def _say(self, message: str) -> None:
        # Nobody waits for it: a lost signal only costs a poll interval or a provider call.
        self._said.submit(message).add_done_callback(_unheard)

    async def _notify(self, messages: Sequence[str]) -> list[None]:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m", CHANNEL, list(messages))
        return [None] * len(messages)

    # --- hearing ---------------------------------------------------------------------------------

    def listen(self, on_new_job: Callable[[], None], on_abort: Callable[[str], None]) -> None:
        def heard(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            try:
                message = json.loads(str(payload))
            except ValueError:
                return
            if not isinstance(message, dict):
                return
            if message.get("new"):
                on_new_job()
            if "abort" in message:
                on_abort(str(message["abort"]))

        self._listening = asyncio.create_task(self._listen(heard), name="job-signals")

    async def _listen(self, heard: Heard) -> None:
        await listen_forever(self.pool, CHANNEL, heard, self._while_listening, "job signals")

    async def _while_listening(self, _conn: Connection, lost: asyncio.Event) -> None:
        self.listening = True
        try:
            await lost.wait()
        finally:
            self.listening = False

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None


def _unheard(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.info("job signals: not sent (%r); workers elsewhere find the job at their next poll", done.exception())
