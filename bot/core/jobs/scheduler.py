"""When jobs run in this process: claiming queued jobs into free slots, keeping their leases alive,
taking over the jobs of processes that died, and stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bot.core import database, inbox, queue
from bot.core.models import Generation

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "The bot was restarted before your images were ready."

# How often handled inbox entries are trimmed (the lease loop does it).
TRIM_INBOX_EVERY_SECONDS = 3600.0

# What the database failing looks like to the loops: they log it and try again on their next round.
DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class WorkerLimits:
    max_jobs: int
    per_user_jobs: int
    lease_seconds: float
    poll_seconds: float
    job_deadline_seconds: float


@dataclass(frozen=True)
class Lease:
    """This process's name on the jobs it holds, and how long a hold lasts without renewal."""

    seconds: float
    owner: str = field(default_factory=lambda: f"worker-{secrets.token_hex(6)}")


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        platforms: Collection[str],
        limits: WorkerLimits,
        lease: Lease,
        run: Callable[[Generation], Coroutine[Any, Any, None]],
        deliver: Callable[[str], Coroutine[Any, Any, bool]],
    ) -> None:
        self.pool = pool
        self.platforms = platforms  # read each round: front ends register after construction
        self.limits = limits
        self.lease = lease
        self._run = run
        self._deliver = deliver
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # by job id: runs and deliveries in this process
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        # When this process may next take over other processes' jobs (see recover).
        self._takeover_after = 0.0
        self._trim_inbox_after = 0.0

    @property
    def running(self) -> int:
        return len(self._tasks)

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._lease_loop())]

    def wake(self) -> None:
        self._wake.set()

    def runs(self, generation_id: str) -> bool:
        return generation_id in self._tasks

    def abort(self, generation_id: str) -> None:
        """Stop a job's task in this process, if it has one (the database already says how it ended)."""
        task = self._tasks.get(generation_id)
        if task is not None:
            task.cancel()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new work, give running jobs `grace_seconds`, then stop the rest."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=grace_seconds)
        # A job stopped before its images were made is failed and refunded; one stopped later was recorded
        # by its run (charged, images kept) and is left undelivered for the next start.
        stopped = list(self._tasks.items())
        for generation_id, task in stopped:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with self.pool.acquire() as conn:
                ended = await queue.fail_unstarted(
                    conn, generation_id, "shutdown", SHUTDOWN_MESSAGE, self.lease.owner, self.lease.seconds
                )
            if ended is not None:
                await self._deliver(generation_id)
        if stopped:
            async with self.pool.acquire() as conn:
                await queue.release_undelivered(conn, self.lease.owner, [generation_id for generation_id, _ in stopped])

    async def recover(self) -> None:
        """Renew our leases; requeue or fail jobs whose lease ran out; deliver what nobody delivered.

        After the database was out of reach, every lease ran out meanwhile, those of live processes too
        (this one's included, still recording what it showed). So takeovers wait one lease length after
        the database is back: each live owner renews within a third of it, before anyone takes its jobs."""
        platforms, owner, seconds = list(self.platforms), self.lease.owner, self.lease.seconds
        now = asyncio.get_running_loop().time()
        try:
            async with self.pool.acquire() as conn:
                if self._tasks:
                    await queue.renew_leases(conn, owner, list(self._tasks), seconds)
                if self._takeover_after == math.inf:  # the first round with the database back
                    self._takeover_after = now + seconds
                if now < self._takeover_after:
                    return
                failed = await queue.recover_expired(conn, platforms, owner, seconds)
                undelivered = await queue.claim_undelivered(conn, platforms, owner, seconds)
        except database.UNREACHABLE:
            self._takeover_after = math.inf
            raise
        for generation_id in [*failed, *undelivered]:
            if generation_id not in self._tasks:
                self._spawn(generation_id, self._deliver(generation_id))
        if failed:
            self.wake()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            # Cleared before claiming, not after: a job accepted while the claim is in flight may be missing
            # from its snapshot, and its wake-up must not be lost (it would wait a whole poll interval).
            self._wake.clear()
            try:
                await self._claim_available()
            except DATABASE_ERRORS as error:
                log.warning("claiming jobs failed, will retry: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.limits.poll_seconds):
                    await self._wake.wait()

    async def _claim_available(self) -> None:
        """Fill the free slots, several jobs per query. Fewer jobs than slots means nothing else is
        claimable now: the next accepted or finished job wakes the loop."""
        free = self.limits.max_jobs - len(self._tasks)
        while not self._stopping and free > 0:
            async with self.pool.acquire() as conn:
                claimed = await queue.claim(
                    conn, list(self.platforms), self.limits.per_user_jobs, self.lease.owner, self.lease.seconds,
                    free,
                )
            for generation in claimed:
                self._spawn(generation.id, self._run(generation))
            if len(claimed) < free:
                return
            free = self.limits.max_jobs - len(self._tasks)

    async def _lease_loop(self) -> None:
        """Keep our leases alive, take over the jobs of processes that died, trim the inbox."""
        while not self._stopping:
            await asyncio.sleep(self.lease.seconds / 3)
            try:
                await self.recover()
                await self._trim_inbox()
            except DATABASE_ERRORS as error:
                log.warning("lease upkeep failed, will retry: %s", error)

    async def _trim_inbox(self) -> None:
        now = asyncio.get_running_loop().time()
        if now >= self._trim_inbox_after:
            async with self.pool.acquire() as conn:
                await inbox.trim_handled(conn)
            self._trim_inbox_after = now + TRIM_INBOX_EVERY_SECONDS

    def _spawn(self, generation_id: str, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks[generation_id] = task

        def _done(finished: asyncio.Task[Any]) -> None:
            if self._tasks.get(generation_id) is finished:
                del self._tasks[generation_id]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("job %s crashed", generation_id, exc_info=finished.exception())
            self._wake.set()

        task.add_done_callback(_done)
