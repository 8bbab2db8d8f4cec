"""How many calls each provider gets at once: an adaptive limit per process under the provider's ceiling,
and, for a provider with a finite ceiling, a slot held across every process of the deployment.

The adaptive limit is AIMD, as TCP does it: an overloaded answer (429, or any answer with Retry-After)
halves it, at most once per round of calls in flight, and pauses new calls to that provider for the
Retry-After; each success adds 1/limit (one more call per round of successes), never above the ceiling.

The deployment-wide slots are Postgres session advisory locks, keyed (provider, slot number), all held on
one connection per process: a process that dies loses its connection and with it its slots, at once.
Taking a slot is one round trip and giving it back another, paid only by providers with a ceiling (a
self-hosted server, an account's rate tier): their calls last seconds. Waiters hear a release through
NOTIFY and look again every POLL_SECONDS regardless (a killed holder sends no notification)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "provider_slot_released"
POLL_SECONDS = 0.5
RECONNECT_SECONDS = 1.0
# What a lost connection looks like: its locks are gone, a new one is taken.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


def lock_key(provider: str) -> int:
    """The first half of the advisory lock key: the provider's name as a signed 32-bit number."""
    return zlib.crc32(provider.encode()) - 2**31


@dataclass
class AdaptiveLimit:
    """This process's calls in flight to one provider: at most floor(limit), limit in [1, ceiling]."""

    ceiling: int
    limit: float = 0.0
    in_flight: int = 0
    paused_until: float = 0.0
    last_decrease: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.limit = float(self.ceiling)

    async def acquire(self) -> float:
        """Wait for room under the limit (and out of any pause); returns when the call started."""
        while True:
            now = time.monotonic()
            if now < self.paused_until:
                await self._wait(self.paused_until - now)
            elif self.in_flight < max(1, int(self.limit)):
                self.in_flight += 1
                return now
            else:
                await self._wait(None)

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def succeeded(self) -> None:
        self.limit = min(float(self.ceiling), self.limit + 1.0 / self.limit)
        self._wake()

    def overloaded(self, started: float, retry_after: float | None) -> None:
        """A call that started at `started` was told the provider is overloaded."""
        now = time.monotonic()
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, now + retry_after)
        # The calls in flight when the limit was cut were sent under the old limit: their 429s are the same
        # news, not another halving.
        if started >= self.last_decrease:
            self.limit = max(1.0, self.limit / 2)
            self.last_decrease = now
            log.info("provider overloaded: calls at once now at most %d of %d", int(self.limit), self.ceiling)

    async def _wait(self, seconds: float | None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()


@dataclass
class Slot:
    """A call's place: report how it went (the adaptive limit learns from it)."""

    limit: AdaptiveLimit
    started: float

    def succeeded(self) -> None:
        self.limit.succeeded()

    def overloaded(self, retry_after: float | None) -> None:
        self.limit.overloaded(self.started, retry_after)


class SharedSlots:
    """Slots of providers with a finite ceiling, held as advisory locks on one connection of this process."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._locks_conn: asyncpg.pool.PoolConnectionProxy | None = None
        self._lock = asyncio.Lock()  # one query at a time on the connection
        self._held: dict[str, set[int]] = {}  # by provider: the slot numbers this process holds
        self._released: dict[str, asyncio.Event] = {}
        self._generation = 0  # which connection the held slots belong to
        self._releasing: set[asyncio.Future[None]] = set()  # slots given back for cancelled callers

    async def acquire(self, provider: str, ceiling: int) -> tuple[int, int]:
        """Wait for one of the provider's `ceiling` slots; returns (slot, connection generation)."""
        while True:
            released = self._released.setdefault(provider, asyncio.Event())
            released.clear()
            attempt = asyncio.ensure_future(self._try(provider, ceiling))
            try:
                # Shielded: a call cancelled while Postgres grants its lock must still give the lock back.
                slot = await asyncio.shield(attempt)
            except asyncio.CancelledError:
                attempt.add_done_callback(self._give_back_if_taken(provider, self._generation))
                raise
            except CONNECTION_ERRORS as error:
                log.warning("provider slots: connection lost (%s), reconnecting", error)
                await self._drop()
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if slot is not None:
                return slot, self._generation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS * (0.5 + random.random())):
                    await released.wait()

    def _give_back_if_taken(self, provider: str, generation: int) -> Callable[[asyncio.Future[int | None]], None]:
        def done(attempt: asyncio.Future[int | None]) -> None:
            if not attempt.cancelled() and attempt.exception() is None and attempt.result() is not None:
                slot = attempt.result()
                assert slot is not None
                self._releasing.add(asyncio.ensure_future(self.release(provider, slot, generation)))
                self._releasing = {task for task in self._releasing if not task.done()}

        return done

    async def release(self, provider: str, slot: int, generation: int) -> None:
        held = self._held.get(provider, set())
        if generation != self._generation:
            return  # that connection is gone, and its locks with it
        held.discard(slot)
        self._wake(provider)
        try:
            async with self._lock:
                conn = self._locks_conn
                if conn is None:
                    return
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, $2), pg_notify($3, $4)", lock_key(provider), slot, CHANNEL,
                    provider,
                )
        except CONNECTION_ERRORS as error:
            log.warning("provider slots: connection lost while releasing (%s)", error)
            await self._drop()

    async def close(self) -> None:
        await self._drop(graceful=True)

    async def _try(self, provider: str, ceiling: int) -> int | None:
        async with self._lock:
            conn = await self._locks_connection()
            held = self._held.setdefault(provider, set())
            # A session may take an advisory lock it already holds: this process's own slots are left out.
            free = [s for s in range(ceiling) if s not in held]
            if not free:
                return None
            random.shuffle(free)  # fewer processes racing for the same slot
            slot: int | None = await conn.fetchval(
                "SELECT s FROM unnest($2::int[]) AS s WHERE pg_try_advisory_lock($1, s) LIMIT 1",
                lock_key(provider), free,
            )
            if slot is not None:
                held.add(slot)
        return slot

    async def _locks_connection(self) -> asyncpg.pool.PoolConnectionProxy:
        if self._locks_conn is None:
            conn = await self.pool.acquire()
            await conn.add_listener(CHANNEL, self._notified)
            self._locks_conn = conn
            self._generation += 1
        return self._locks_conn

    def _notified(self, _conn: object, _pid: int, _channel: str, provider: object) -> None:
        self._wake(str(provider))

    def _wake(self, provider: str) -> None:
        event = self._released.get(provider)
        if event is not None:
            event.set()

    async def _drop(self, graceful: bool = False) -> None:
        """Forget the connection (and the slots on it); a live one is closed, not pooled: it held locks."""
        conn, self._locks_conn = self._locks_conn, None
        self._held.clear()
        self._generation += 1
        if conn is None:
            return
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            if graceful:
                await conn.execute("SELECT pg_advisory_unlock_all()")
                await conn.remove_listener(CHANNEL, self._notified)
                await self.pool.release(conn)
                return
        conn.terminate()
        with contextlib.suppress(Exception):
            await self.pool.release(conn)


class ProviderLimits:
    """Every provider's limits in this process. `ceilings` by provider name: None means no ceiling of its
    own (the adaptive limit then starts at `default_ceiling`, and nothing is shared through Postgres)."""

    def __init__(
        self, default_ceiling: int, ceilings: Mapping[str, int | None] | None = None, pool: asyncpg.Pool | None = None
    ) -> None:
        self.default_ceiling = default_ceiling
        self.ceilings = dict(ceilings or {})
        self.shared = SharedSlots(pool) if pool is not None else None
        self._adaptive: dict[str, AdaptiveLimit] = {}

    def ceiling(self, provider: str, own: int | None) -> int | None:
        """The configured ceiling, else the provider's own (A1111's setting), else none."""
        return self.ceilings.get(provider, own)

    def adaptive(self, provider: str, own: int | None = None) -> AdaptiveLimit:
        limit = self._adaptive.get(provider)
        if limit is None:
            ceiling = self.ceiling(provider, own)
            limit = AdaptiveLimit(ceiling if ceiling is not None else self.default_ceiling)
            self._adaptive[provider] = limit
        return limit

    @contextlib.asynccontextmanager
    async def slot(self, provider: str, own: int | None = None) -> AsyncIterator[Slot]:
        limit = self.adaptive(provider, own)
        started = await limit.acquire()
        try:
            ceiling = self.ceiling(provider, own)
            if ceiling is None or self.shared is None:
                yield Slot(limit, started)
                return
            number, generation = await self.shared.acquire(provider, ceiling)
            try:
                yield Slot(limit, started)
            finally:
                await asyncio.shield(self.shared.release(provider, number, generation))
        finally:
            limit.release()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
