"""`python -m bot run` SIGKILLed with Telegram updates taken but not handled: confirmed to Telegram (the
next polling offset, the webhook's 200) only once in the inbox, they are all handled after a restart, and
none twice."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server
from tests.test_run_process import start_bot, wait_exit

USERS = range(601, 609)  # one request each: no per-user limit is met
# Short claims: the updates a killed process was handling are handed out again quickly.
FAST = {"INBOX_CLAIM_SECONDS": "2"}


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


async def inbox(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT count(*) AS recorded, count(handled_at) AS handled FROM image.inbox WHERE platform = 'telegram'"
    )
    return row["recorded"], row["handled"]


async def all_done(pool: asyncpg.Pool, fake: FakeTelegram) -> bool:
    recorded, handled = await inbox(pool)
    delivered = await pool.fetchval("SELECT count(*) FROM image.generations WHERE delivered_at IS NOT NULL")
    return recorded == handled == len(USERS) and delivered == len(USERS)


async def assert_each_handled_once(pool: asyncpg.Pool, fake: FakeTelegram) -> None:
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == len(USERS)
    for user in USERS:
        assert len(fake.sent("sendPhoto", user)) == 1, user
        assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = $1", str(user)) == 19


async def test_sigkill_with_polled_updates_unhandled_then_restart_handles_each_once(
    fake: FakeTelegram, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # Replies hang: the first updates are being handled (claimed), the rest wait their turn when killed.
    fake.delay("sendMessage", 30)
    bot = start_bot(fake, db_dsn, tmp_path, **FAST)
    try:
        await wait_for(lambda: len(fake.sent("getUpdates")) >= 1, within=30)
        fake.push(*[fake.message_update(fake.user(user, "Ann"), "/imagine a lighthouse kept in the inbox")
                    for user in USERS])
        await wait_for(lambda: _equals(_first(inbox(pool)), len(USERS)), within=30)
        await wait_for(lambda: not fake._updates, within=30)  # confirmed: Telegram won't send them again
        await wait_for(lambda: fake._in_flight.get("sendMessage", 0) >= 1, within=30)
        assert (await inbox(pool))[1] < len(USERS)
        bot.kill()
        await wait_exit(bot)
    finally:
        if bot.poll() is None:
            bot.kill()
    fake.delay("sendMessage", 0)
    restarted = start_bot(fake, db_dsn, tmp_path, **FAST)
    try:
        await wait_for(lambda: all_done(pool, fake), within=30)
    finally:
        restarted.kill()
        await wait_exit(restarted)
    await assert_each_handled_once(pool, fake)


async def test_sigkill_right_after_webhook_200s_then_restart_handles_each_once(
    fake: FakeTelegram, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    port = _free_port()
    webhook = {"TELEGRAM_WEBHOOK_URL": "https://bot.example.test/telegram/hook", "TELEGRAM_WEBHOOK_SECRET": "s3cret",
               "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1", "TELEGRAM_WEBHOOK_PORT": str(port), **FAST}
    fake.delay("sendMessage", 30)
    bot = start_bot(fake, db_dsn, tmp_path, **webhook)
    updates = [fake.message_update(fake.user(user, "Ann"), "/imagine a lighthouse posted to the webhook")
               for user in USERS]
    try:
        await wait_for(lambda: fake.webhook is not None, within=30)
        async with aiohttp.ClientSession() as session:
            for update in updates:
                async with session.post(
                    f"http://127.0.0.1:{port}/telegram/hook", json=update,
                    headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"},
                ) as response:
                    assert response.status == 200
        bot.kill()  # right after the 200s: Telegram would never send these again
        await wait_exit(bot)
    finally:
        if bot.poll() is None:
            bot.kill()
    assert (await inbox(pool))[0] == len(USERS)
    fake.delay("sendMessage", 0)
    restarted = start_bot(fake, db_dsn, tmp_path, **webhook)
    try:
        await wait_for(lambda: all_done(pool, fake), within=30)
        # Telegram resending one it got a 200 for changes nothing.
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://127.0.0.1:{port}/telegram/hook", json=updates[0],
                headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"},
            ) as response:
                assert response.status == 200
        await wait_for(lambda: all_done(pool, fake))
    finally:
        restarted.kill()
        await wait_exit(restarted)
    await assert_each_handled_once(pool, fake)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _first(awaitable: Any) -> Any:
    return (await awaitable)[0]


async def _equals(awaitable: Any, expected: Any) -> bool:
    return await awaitable == expected


async def test_sigkill_after_the_photo_was_accepted_then_restart_posts_it_no_more(
    fake: FakeTelegram, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # The photo is in the chat and has its receipt; retiring the status message hangs, so the job is not
    # marked delivered when the process dies.
    fake.delay("deleteMessage", 30, chat_id=611)
    bot = start_bot(fake, db_dsn, tmp_path)
    try:
        fake.send(fake.user(611, "Ann"), "/imagine a lighthouse posted once")
        await wait_for(lambda: pool.fetchval("SELECT count(*) = 1 FROM image.delivery_parts WHERE part = 'photo'"),
                       within=30)
        await wait_for(lambda: fake._in_flight.get("deleteMessage", 0) == 1, within=30)
        assert not await pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations")
        bot.kill()
        await wait_exit(bot)
    finally:
        if bot.poll() is None:
            bot.kill()
    fake.delay("deleteMessage", 0, chat_id=611)
    restarted = start_bot(fake, db_dsn, tmp_path)
    try:
        await wait_for(lambda: pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations"), within=30)
    finally:
        restarted.kill()
        await wait_exit(restarted)
    assert len(fake.sent("sendPhoto", 611)) == 1
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = '611'") == 19
