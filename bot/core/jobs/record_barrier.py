"""What makes a reader wait for a job shown in its chat before it is recorded, in any process.

A job's images go to the chat while they are being stored; the job is recorded, and its delivery receipt
(the platform's file references) written, only after both. Until then a question about the job (a button
press, /history) must wait for that record instead of missing it, or of re-uploading what the platform
already holds.

The question may reach another process than the one showing the job. Each process announces the holds it
takes and leaves through Postgres NOTIFY, and keeps the other processes' holds it hears of next to its own:
a reader looks only in memory (no round trip, nearly always nothing to wait for) and waits for the release
to be heard. One connection per process listens and publishes (re-established after a drop; what was
announced meanwhile is missed, and its readers read what is there, as they do after the timeout). A
hold whose release is never heard (its process died) is forgotten after REMOTE_HOLD_SECONDS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg

from bot.core.listening import Connection, listen_forever
from bot.core.models import UserIdentity

log = logging.getLogger(__name__)

# How long a reader waits for a record at most; past it, it reads what is there.
RECORD_WAIT_SECONDS = 5.0
CHANNEL = "record_holds"
# Longer than any window between showing a job and recording it.
REMOTE_HOLD_SECONDS = 300.0


@dataclass(frozen=True)
class _Hold:
    owner: tuple[str, str]  # (platform, platform user id): display names change
    released: asyncio.Event
    since: float = field(default_factory=time.monotonic)


class RecordBarrier:
    def __init__(self, pool: asyncpg.Pool | None = None) -> None:
        """Without a pool, it holds readers of this process only."""
        self.pool = pool
        self._holds: dict[str, _Hold] = {}  # by job id and by each of its images' ids
        self._remote: dict[str, tuple[list[str], _Hold]] = {}  # another process's holds: by job id
        self._outbox: list[str] = []  # announcements not yet published
        self._pending = asyncio.Event()
        self._unsent = 0  # announced and not yet published
        self._sent = asyncio.Event()  # set when nothing is left to publish
        self._task: asyncio.Task[None] | None = None
        self._own_pid = 0  # our listening connection's backend: what we hear from it is our own

    # --- the process showing a job -------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, generation_id: str, owner: UserIdentity, image_ids: Iterable[str] = ()) -> Iterator[None]:
        """Readers of this job, its images or its owner's history wait until the block is left."""
        hold = _Hold((owner.platform, owner.platform_user_id), asyncio.Event())
        keys = [generation_id, *image_ids]
        for key in keys:
            self._holds[key] = hold
        self._announce({"hold": generation_id, "keys": keys, "owner": list(hold.owner)})
        try:
            yield
        finally:
            for key in keys:
                if self._holds.get(key) is hold:
                    del self._holds[key]
            hold.released.set()
            self._announce({"release": generation_id})

    # --- readers -------------------------------------------------------------------------------

    async def wait(self, ids: Sequence[str] = (), owner: UserIdentity | None = None) -> None:
        """Wait, briefly, for the held jobs that have one of these ids (a job's or an image's) or this owner.
        Returns at once when there are none, which is nearly always."""
        who = (owner.platform, owner.platform_user_id) if owner else None
        waiting = {hold.released for key, hold in self._holds.items() if key in ids or hold.owner == who}
        if self._remote:
            self._forget_stale()
            for keys, hold in self._remote.values():
                if hold.owner == who or any(key in ids for key in keys):
                    waiting.add(hold.released)
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_WAIT_SECONDS):
                    await asyncio.gather(*(released.wait() for released in waiting))

    # --- across processes ----------------------------------------------------------------------

    def start(self) -> None:
        if self.pool is not None and self._task is None:
            self._task = asyncio.create_task(self._connected())

    async def close(self) -> None:
        if self._task is not None:
            # The last releases (of jobs recorded while stopping) are worth a moment: readers elsewhere
            # would otherwise wait their whole timeout.
            if self._unsent:
                self._sent.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._sent.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _announce(self, message: dict[str, object]) -> None:
        if self._task is not None:
            self._outbox.append(json.dumps(message, separators=(",", ":")))
            self._unsent += 1
            self._pending.set()

    async def _connected(self) -> None:
        """Listen and publish on one connection; take another when it drops."""
        assert self.pool is not None
        await listen_forever(self.pool, CHANNEL, self._heard, self._publish_while_listening, "record barrier")

    async def _publish_while_listening(self, conn: Connection, lost: asyncio.Event) -> None:
        self._own_pid = conn.get_server_pid()
        woken = asyncio.create_task(self._wake_when(lost))  # the publisher waits for an announcement
        try:
            await self._publish(conn, lost)
        finally:
            woken.cancel()

    async def _wake_when(self, lost: asyncio.Event) -> None:
        await lost.wait()
        self._pending.set()

    async def _publish(self, conn: Connection, lost: asyncio.Event) -> None:
        """Send what was announced, several announcements per round trip, until the connection is lost."""
        while not lost.is_set():
            if not self._outbox:
                self._pending.clear()
                await self._pending.wait()  # set by an announcement, or by the connection dropping
                continue
            batch, self._outbox = self._outbox, []
            try:
                await conn.execute("SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m", CHANNEL, batch)
            finally:
                self._unsent -= len(batch)  # sent, or lost with the connection
                if not self._unsent:
                    self._sent.set()

    def _heard(self, _conn: object, pid: int, _channel: str, payload: object) -> None:
        if pid == self._own_pid:
            return  # our own holds are in _holds already
        try:
            message = json.loads(str(payload))
        except ValueError:
            return
        if "hold" in message:
            owner = message.get("owner") or ["", ""]
            hold = _Hold((str(owner[0]), str(owner[1])), asyncio.Event())
            self._remote[str(message["hold"])] = ([str(k) for k in message.get("keys", [])], hold)
        elif "release" in message:
            released = self._remote.pop(str(message["release"]), None)
            if released is not None:
                released[1].released.set()

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for generation_id, (_keys, hold) in list(self._remote.items()):
            if now - hold.since > REMOTE_HOLD_SECONDS:
                del self._remote[generation_id]
                hold.released.set()
