"""A real bot process killed mid-job (SIGKILL) or asked to stop (SIGTERM). Credits are never lost or
spent twice; an accepted request is completed or refunded, and delivered exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg

from tests.conftest import wait_for


class BotProcess:
    """`python -m bot console` in its own process, stdin kept open, stdout collected line by line."""

    def __init__(self, data_dir: Path, dsn: str, **env: str) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY"))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "console"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=data_dir,
            env={**clean, "DATA_DIR": str(data_dir), "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING",
                 "JOB_LEASE_SECONDS": "1.5", "WORKER_POLL_SECONDS": "0.1", **env},
        )
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def finish(self, timeout: float = 30) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout)


async def statuses(pool: asyncpg.Pool) -> list[str]:
    return [r["status"] for r in await pool.fetch("SELECT status FROM image.generations ORDER BY created_at")]


async def assert_books_balance(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        """SELECT a.balance, coalesce(sum(l.delta), 0) AS total FROM image.accounts a
           LEFT JOIN image.credit_ledger l ON l.account_id = a.id GROUP BY a.id"""
    )
    assert rows and all(r["balance"] == r["total"] for r in rows)


async def test_sigkill_while_queued_and_while_generating(db_dsn: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    # One job at a time and a slow model: the first job is inside the provider call, the second is queued.
    bot = BotProcess(tmp_path, db_dsn, OFFLINE_DELAY_SECONDS="3", MAX_JOBS_IN_FLIGHT="1")
    bot.send("/imagine a lighthouse that survives crashes --n 2")
    bot.send("/imagine a second job still in the queue --n 1")
    await wait_for(lambda: statuses(pool), within=30)
    await wait_for(lambda: _equals(statuses(pool), ["running", "queued"]), within=30)
    bot.kill()
    assert "done:" not in bot.output()

    restarted = BotProcess(tmp_path, db_dsn, OFFLINE_DELAY_SECONDS="0.2")
    await wait_for(lambda: _equals(statuses(pool), ["succeeded", "succeeded"]), within=30)
    await wait_for(lambda: pool.fetchval("SELECT bool_and(delivered_at IS NOT NULL) FROM image.generations"))
    assert restarted.finish() == 0
    out = restarted.output()
    assert out.count("done:") == 2  # each delivered once, by the process that completed it
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 3
    assert await pool.fetchval("SELECT balance FROM image.accounts") == 20 - 3
    await assert_books_balance(pool)


async def test_sigkill_after_completion_delivers_nothing_twice(db_dsn: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    bot = BotProcess(tmp_path, db_dsn)
    bot.send("/imagine a finished job")
    await wait_for(lambda: "done:" in bot.output(), within=30)
    await wait_for(lambda: pool.fetchval("SELECT bool_and(delivered_at IS NOT NULL) FROM image.generations"))
    bot.kill()
    restarted = BotProcess(tmp_path, db_dsn)
    await asyncio.sleep(2.5)  # longer than a lease: anything unfinished would have been picked up
    assert restarted.finish() == 0
    assert "done:" not in restarted.output()
    assert await pool.fetchval("SELECT balance FROM image.accounts") == 19
    await assert_books_balance(pool)


async def test_sigterm_finishes_quick_jobs_and_refunds_slow_ones(
    db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    bot = BotProcess(tmp_path, db_dsn, OFFLINE_DELAY_SECONDS="30", SHUTDOWN_GRACE_SECONDS="1")
    bot.send("/imagine a job that cannot finish in the grace period --n 2")
    await wait_for(lambda: _equals(statuses(pool), ["running"]), within=30)
    bot.process.send_signal(signal.SIGTERM)
    assert bot.process.wait(30) == 0
    out = bot.output()
    assert "Shutting down" in out
    assert "The bot was restarted before your images were ready. 2 credits refunded." in out
    assert await statuses(pool) == ["failed"]
    assert await pool.fetchval("SELECT balance FROM image.accounts") == 20
    await assert_books_balance(pool)

    quick = BotProcess(tmp_path, db_dsn, OFFLINE_DELAY_SECONDS="1", SHUTDOWN_GRACE_SECONDS="10")
    quick.send("/imagine a job that finishes within the grace period")
    await wait_for(lambda: _equals(statuses(pool), ["failed", "running"]), within=30)
    quick.process.send_signal(signal.SIGTERM)
    assert quick.process.wait(30) == 0
    assert "done:" in quick.output()
    assert await statuses(pool) == ["failed", "succeeded"]


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected
