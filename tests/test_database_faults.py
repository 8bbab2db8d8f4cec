"""The database connection dropping under the bot: no half-applied charge, the pool recovers."""

from __future__ import annotations

import asyncio

import asyncpg

from bot.core.database_errors import translates_connection_errors
from bot.core.errors import BotError, Contended, TemporarilyUnavailable
from bot.core.models import Destination, ImagineRequest, UserIdentity

HERE = Destination("test", "chat-1")


async def kill_connections(admin_dsn: str, database: str) -> int:
    admin = await asyncpg.connect(admin_dsn)
    try:
        return await admin.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = $1 AND pid <> pg_backend_pid()""",
            database,
        )
    finally:
        await admin.close()


async def test_connections_killed_mid_requests(runtime_factory, pool, db_dsn, pg_server_dsn) -> None:
    database = await pool.fetchval("SELECT current_database()")
    async with runtime_factory(per_user_queued_limit=1000, starting_credits=1000) as rt:

        async def request(i: int) -> object:
            try:
                return await rt.service.imagine(UserIdentity("test", f"u{i % 5}"), ImagineRequest(f"p {i}"), HERE)
            except BotError as error:
                return error

        async def killer() -> int:
            killed = 0
            for _ in range(5):
                await asyncio.sleep(0.02)
                killed += await kill_connections(pg_server_dsn, database)
            return killed

        results, killed = await asyncio.gather(asyncio.gather(*(request(i) for i in range(150))), killer())
        # After the storm the pool serves again. A connection whose server side was killed while it sat idle
        # in the pool is only found dead by the next request on it, which fails like any dropped connection
        # ("nothing was charged"); the one after it gets a fresh connection.
        for _ in range(10):  # at most one stale connection per pooled one
            try:
                after = await rt.service.imagine(UserIdentity("test", "late"), ImagineRequest("after the storm"), HERE)
                break
            except TemporarilyUnavailable:
                continue

    assert killed > 0
    failures = [r for r in results if isinstance(r, BotError)]
    print(f"{killed} connections killed, {len(failures)} of 150 requests refused")
    assert all("nothing was charged" in f.user_message.lower() for f in failures)
    assert after.generation.status == "queued"
    # Every reservation belongs to a recorded job and every job has exactly its reservation: nothing half-applied.
    accepted = await pool.fetchval("SELECT count(*) FROM image.generations")
    reserves = await pool.fetchval("SELECT count(*) FROM image.credit_ledger WHERE reason = 'reserve'")
    assert accepted == reserves == 150 - len(failures) + 1
    mismatched = await pool.fetchval(
        """SELECT count(*) FROM image.accounts a
           WHERE a.balance <> (SELECT coalesce(sum(delta), 0) FROM image.credit_ledger l WHERE l.account_id = a.id)"""
    )
    assert mismatched == 0


async def test_a_deadlock_victim_gets_plain_words(pool) -> None:
    """Two transactions taking the same two rows in opposite orders: Postgres rolls one back, and a service
    call that was the victim says so in plain words instead of failing with an internal error."""
    await pool.execute("CREATE TABLE contended (id int PRIMARY KEY)")
    await pool.execute("INSERT INTO contended VALUES (1), (2)")
    both_hold_one = asyncio.Barrier(2)

    @translates_connection_errors
    async def take(first: int, second: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM contended WHERE id = $1 FOR UPDATE", first)
            await both_hold_one.wait()
            await conn.execute("SELECT 1 FROM contended WHERE id = $1 FOR UPDATE", second)

    results = await asyncio.gather(take(1, 2), take(2, 1), return_exceptions=True)
    assert sum(isinstance(r, Contended) for r in results) == 1 and results.count(None) == 1
