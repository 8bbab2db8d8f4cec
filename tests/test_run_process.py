"""`python -m bot run` as operators start it (the Procfile's process), against a local Bot API server:
SIGTERM finishes or refunds and exits 0; SIGKILL mid-job loses nothing and delivers once after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


def start_bot(fake: FakeTelegram, dsn: str, data_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY"))}
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "run", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=data_dir,
        env={**clean, "DATA_DIR": str(data_dir), "DATABASE_URL": dsn, "LOG_LEVEL": "INFO",
             "TELEGRAM_TOKEN": fake.token, "TELEGRAM_BASE_URL": fake.base_url,
             "TELEGRAM_BASE_FILE_URL": fake.base_file_url, "JOB_LEASE_SECONDS": "1.5",
             "WORKER_POLL_SECONDS": "0.1", **env},
    )


async def statuses(pool: asyncpg.Pool) -> list[str]:
    return [r["status"] for r in await pool.fetch("SELECT status FROM image.generations ORDER BY created_at")]


async def wait_exit(process: subprocess.Popen[str], within: float = 30) -> int:
    return await asyncio.to_thread(process.wait, within)


async def test_sigterm_refunds_what_cannot_finish_and_exits_0(fake, db_dsn, pool, tmp_path) -> None:
    bot = start_bot(fake, db_dsn, tmp_path, OFFLINE_DELAY_SECONDS="30", SHUTDOWN_GRACE_SECONDS="1")
    try:
        ann = fake.user(501, "Ann")
        fake.send(ann, "/imagine a lighthouse that will not be ready in time --n 2")
        await wait_for(lambda: _equals(statuses(pool), ["running"]), within=30)
        bot.send_signal(signal.SIGTERM)
        assert await wait_exit(bot) == 0
    finally:
        if bot.poll() is None:
            bot.kill()
    output = bot.stdout.read() if bot.stdout else ""
    assert "Traceback" not in output
    told = [c for c in fake.sent(chat_id=501) if "2 credits refunded" in str(c.params.get("text", ""))]
    assert told, [c.params for c in fake.sent(chat_id=501)]
    assert await statuses(pool) == ["failed"]
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = '501'") == 20


async def test_sigkill_mid_job_then_restart_delivers_once(fake, db_dsn, pool, tmp_path) -> None:
    bot = start_bot(fake, db_dsn, tmp_path, OFFLINE_DELAY_SECONDS="3")
    try:
        ann = fake.user(502, "Ann")
        fake.send(ann, "/imagine a lighthouse that survives a crash")
        await wait_for(lambda: _equals(statuses(pool), ["running"]), within=30)
        bot.kill()
        await wait_exit(bot)
        assert not fake.sent("sendPhoto", 502)
        restarted = start_bot(fake, db_dsn, tmp_path, OFFLINE_DELAY_SECONDS="0.1")
        try:
            await fake.wait_sent("sendPhoto", 502, within=30)
            await wait_for(lambda: pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations"))
            await asyncio.sleep(2)  # past another lease: a second delivery would show up now
            restarted.send_signal(signal.SIGTERM)
            assert await wait_exit(restarted) == 0
        finally:
            if restarted.poll() is None:
                restarted.kill()
    finally:
        if bot.poll() is None:
            bot.kill()
    assert len(fake.sent("sendPhoto", 502)) == 1
    assert await statuses(pool) == ["succeeded"]
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = '502'") == 19


async def _equals(awaitable: Any, expected: Any) -> bool:
    return await awaitable == expected


async def test_sigkill_while_delivering_then_restart_delivers_once(fake, db_dsn, pool, tmp_path) -> None:
    # The upload hangs: the job is finished and stored but its delivery is cut off by the kill.
    fake.delay("sendPhoto", 30, chat_id=503)
    bot = start_bot(fake, db_dsn, tmp_path)
    try:
        ann = fake.user(503, "Ann")
        fake.send(ann, "/imagine a lighthouse delivered after a crash")
        await wait_for(lambda: _equals(statuses(pool), ["succeeded"]), within=30)
        await asyncio.sleep(0.3)
        bot.kill()
        await wait_exit(bot)
    finally:
        if bot.poll() is None:
            bot.kill()
    assert not fake.sent("sendPhoto", 503)
    fake.delay("sendPhoto", 0, chat_id=503)
    restarted = start_bot(fake, db_dsn, tmp_path)
    try:
        await fake.wait_sent("sendPhoto", 503, within=30)
        await wait_for(lambda: pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations"))
        await asyncio.sleep(2)
        restarted.send_signal(signal.SIGTERM)
        assert await wait_exit(restarted) == 0
    finally:
        if restarted.poll() is None:
            restarted.kill()
    assert len(fake.sent("sendPhoto", 503)) == 1
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 1
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = '503'") == 19


async def test_a_rejected_token_is_one_line_and_exit_1(fake, db_dsn, tmp_path) -> None:
    bot = start_bot(fake, db_dsn, tmp_path, TELEGRAM_TOKEN="999:not-the-token")
    try:
        code = await wait_exit(bot)
    finally:
        if bot.poll() is None:
            bot.kill()
    output = bot.stdout.read() if bot.stdout else ""
    assert code == 1
    assert "Telegram rejected TELEGRAM_TOKEN" in output
    assert "Traceback" not in output and "not-the-token" not in output
