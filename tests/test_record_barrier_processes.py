"""The wait for a job's record across processes. Two `python -m bot run` processes on one database, both
receiving Telegram updates by webhook (the test is their load balancer: it posts each update to the process
it chooses): a job shown by A and not yet recorded is found by a button pressed on B. And the barrier's
own parts across two pools: release, not timeout; a dropped listening connection comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bot.core import database
from bot.core.jobs.record_barrier import CHANNEL, RECORD_WAIT_SECONDS, RecordBarrier
from bot.core.models import UserIdentity
from tests.conftest import wait_for
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server
from tests.test_roles import Output
from tests.test_run_process import start_bot
from tests.test_telegram_bot import free_port

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
HOOK = "/telegram/hook"
SECRET = "s3cret"


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


def webhook(port: int) -> dict[str, str]:
    return {"TELEGRAM_WEBHOOK_URL": f"https://bot.example.test{HOOK}", "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1", "TELEGRAM_WEBHOOK_PORT": str(port)}


async def post(http: aiohttp.ClientSession, port: int, update: dict[str, Any]) -> None:
    """What the load balancer in front of the webhook processes does with an update: to this process."""
    async with http.post(f"http://127.0.0.1:{port}{HOOK}", json=update,
                         headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}) as response:
        assert response.status == 200


def replies(fake: FakeTelegram, since: int) -> list[Any]:
    return [c for c in fake.calls[since:] if c.method == "sendMessage" and c.chat_id == 801 and c.ok]


class Holds(list[str]):
    """The jobs held by bot processes, as a third listener hears of them."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self.conn = conn

    def heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        message = json.loads(str(payload))
        if "hold" in message:
            self.append(message["hold"])

    async def close(self) -> None:
        await self.conn.close()


async def heard_holds(dsn: str) -> Holds:
    holds = Holds(await asyncpg.connect(dsn))
    await holds.conn.add_listener(CHANNEL, holds.heard)
    return holds


async def listening(pool: asyncpg.Pool, count: int, besides: Sequence[int] = ()) -> list[int]:
    """The server pids of `count` listening connections, none of them in `besides` (connections that were
    terminated may still be listed for a moment)."""
    query = (
        "SELECT array_agg(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN%' AND NOT pid = ANY($1::int[])"
    )

    async def found() -> list[int] | None:
        pids = await pool.fetchval(query, list(besides))
        return pids if pids is not None and len(pids) == count else None

    return await wait_for(found)


async def test_a_button_on_process_b_finds_a_result_shown_by_process_a(
    fake: FakeTelegram, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # A runs the jobs and serves the chat; B is a front end only (a worker there could take A's job).
    ports = free_port(), free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Output(start_bot(fake, db_dsn, tmp_path / "a", **webhook(ports[0])))
    b = Output(start_bot(fake, db_dsn, tmp_path / "b", "--only", "telegram", **webhook(ports[1])))
    ann = fake.user(801, "Ann")
    try:
        await a.wait_for("running:")
        await b.wait_for("running:")
        await listening(pool, 3)  # both record barriers, and A's job signals (A runs jobs)
        holds = await heard_holds(db_dsn)
        async with aiohttp.ClientSession() as http, pool.acquire() as lock, lock.transaction():
            # A's record of the result (one statement, images and job) waits for this lock: A stays between
            # showing the result and recording it, as it does while a slow store or database catches up.
            await lock.execute("LOCK TABLE image.images IN SHARE MODE")
            await post(http, ports[0], fake.message_update(ann, "/imagine a red fox"))
            [photo] = await fake.wait_sent("sendPhoto", 801, within=30)
            vary = next(data for data in photo.callback_data() if data.startswith("v:"))
            await wait_for(lambda: holds)
            await asyncio.sleep(0.2)  # B heard A's hold when we did: a moment to take it in

            before = len(fake.calls)
            pressed = time.monotonic()
            await post(http, ports[1], fake.press_update(ann, photo.result, vary))
            await fake.wait_sent("answerCallbackQuery", within=10)
            await asyncio.sleep(0.5)
            assert not replies(fake, before)  # B waits for the record: no "doesn't exist" meanwhile
            assert not await pool.fetchval("SELECT count(*) FROM image.images")
        # A records, B hears the release and accepts the variation, which A's worker makes and shows.
        await fake.wait_sent("sendPhoto", 801, count=2, within=30)
    finally:
        await holds.close()
        a_log = await a.stop()
        b_log = await b.stop()
    answer = replies(fake, before)[0]
    assert "doesn't exist" not in answer.params["text"]
    assert answer.finished - pressed < RECORD_WAIT_SECONDS - 1  # on hearing the release, not after the timeout
    assert await pool.fetchval("SELECT parent_image_id FROM image.generations WHERE kind = 'variation'") == vary[2:]
    assert "started: model=" not in b_log
    assert "Traceback" not in a_log + b_log


async def test_readers_elsewhere_wait_for_the_release_not_the_timeout(db_dsn, pool) -> None:
    pools = [await database.create_pool(db_dsn, 2) for _ in range(2)]
    shower, reader = RecordBarrier(pools[0]), RecordBarrier(pools[1])
    shower.start()
    reader.start()
    try:
        await listening(pool, 2)
        await reader.wait(["job-1"], ALICE)  # nothing held anywhere: at once
        with shower.hold("job-1", ALICE, ["image-1"]):
            await asyncio.sleep(0.2)
            by_image = asyncio.create_task(reader.wait(["image-1"]))
            by_owner = asyncio.create_task(reader.wait(owner=UserIdentity("test", "alice", "renamed")))
            unrelated = asyncio.create_task(reader.wait(["job-2"], BOB))
            await asyncio.wait_for(unrelated, 1)
            await asyncio.sleep(0.2)
            assert not by_image.done() and not by_owner.done()
            released = time.monotonic()
        await asyncio.wait_for(asyncio.gather(by_image, by_owner), 2)
        assert time.monotonic() - released < 1
    finally:
        await shower.close()
        await reader.close()
        for own in pools:
            await own.close()


async def test_the_listening_connection_comes_back_after_a_drop(db_dsn, pool) -> None:
    pools = [await database.create_pool(db_dsn, 2) for _ in range(2)]
    shower, reader = RecordBarrier(pools[0]), RecordBarrier(pools[1])
    shower.start()
    reader.start()
    try:
        first = await listening(pool, 2)
        await pool.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", first)
        await listening(pool, 2, besides=first)
        await asyncio.sleep(0.2)
        with shower.hold("job-1", ALICE, ["image-1"]):
            await asyncio.sleep(0.3)
            waiting = asyncio.create_task(reader.wait(["image-1"]))
            await asyncio.sleep(0.2)
            assert not waiting.done()
        await asyncio.wait_for(waiting, 2)
    finally:
        await shower.close()
        await reader.close()
        for own in pools:
            await own.close()
