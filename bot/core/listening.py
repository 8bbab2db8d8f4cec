"""One pooled connection that LISTENs on a Postgres channel for as long as the process runs, taken again
after a drop (the record barrier and the job signals each keep one). What is notified while no one listens
is missed: whoever relies on a channel has a fallback (a timeout, a poll)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 1.0
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

Heard = Callable[[object, int, str, object], None]  # asyncpg's listener: (connection, pid, channel, payload)
Connection = asyncpg.pool.PoolConnectionProxy
# What to do with the connection while it listens, until `lost` is set (it dropped) or it raises.
Use = Callable[[Connection, asyncio.Event], Awaitable[None]]


async def listen_forever(pool: asyncpg.Pool, channel: str, heard: Heard, use: Use, name: str) -> None:
    """Listen with `heard` on a connection from `pool`, run `use` on it, and start over on another when it
    drops. Runs until cancelled."""
    while True:
        try:
            conn = await pool.acquire()
        except CONNECTION_ERRORS as error:
            log.warning("%s: no connection (%s), retrying", name, error)
            await asyncio.sleep(RECONNECT_SECONDS)
            continue
        lost = asyncio.Event()

        def dropped(_conn: object, lost: asyncio.Event = lost) -> None:
            lost.set()

        try:
            conn.add_termination_listener(dropped)
            await conn.add_listener(channel, heard)
            await use(conn, lost)
        except CONNECTION_ERRORS as error:
            log.warning("%s: connection failed (%s)", name, error)
        finally:
            await _let_go(pool, conn, channel, heard, dropped)
        log.warning("%s: listening connection lost, reconnecting", name)
        await asyncio.sleep(RECONNECT_SECONDS)


async def _let_go(
    pool: asyncpg.Pool, conn: Connection, channel: str, heard: Heard, dropped: Callable[[object], None]
) -> None:
    # The pool does not reset connections: neither the LISTEN nor our listeners may go back to it. (A
    # connection that died was taken back by the pool already.)
    with contextlib.suppress(*CONNECTION_ERRORS):
        conn.remove_termination_listener(dropped)
        if not conn.is_closed():
            await asyncio.shield(conn.remove_listener(channel, heard))
    with contextlib.suppress(*CONNECTION_ERRORS):
        await asyncio.shield(pool.release(conn))
