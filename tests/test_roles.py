"""`python -m bot run --only ...`: a deployment's front ends and workers as separate processes, against a
local Bot API server. A worker-only process receives no updates; a front end without a worker runs no jobs;
the two together deliver a result end to end."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bot.bootstrap import Roles
from bot.cli import build_parser
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server
from tests.test_run_process import start_bot, wait_exit


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


class Output:
    """A bot process's output, read as it comes (the launcher logs "running:" once started)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []

    async def wait_for(self, text: str, within: float = 30) -> None:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while not any(text in line for line in self.lines):
                line = await asyncio.to_thread(self.process.stdout.readline)
                assert line, f"exited before {text!r}: {''.join(self.lines)}"
                self.lines.append(line)

    async def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                assert await wait_exit(self.process) == 0
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        rest = self.process.stdout.read() if self.process.stdout else ""
        return "".join(self.lines) + rest


def roles(*argv: str) -> Roles:
    args = build_parser().parse_args(["run", *argv])
    return Roles.only(name for names in args.only for name in names)


def test_only_combines_repeated_and_comma_separated_roles() -> None:
    assert roles() == Roles()
    assert roles("--only", "worker") == Roles(frozenset(), jobs=True)
    assert roles("--only", "discord", "--only", "worker") == Roles(frozenset({"discord"}), jobs=True)
    assert roles("--only", "discord,telegram") == Roles(frozenset({"discord", "telegram"}), jobs=False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--only", "discord,cook"])


async def test_a_front_end_and_a_worker_deliver_together(fake: FakeTelegram, db_dsn, pool, tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "web").mkdir()
    worker = Output(start_bot(fake, db_dsn, tmp_path / "worker", "--only", "worker"))
    web: Output | None = None
    try:
        await worker.wait_for("running:")
        ann = fake.user(701, "Ann")
        fake.send(ann, "/imagine a lighthouse nobody has received yet")
        await asyncio.sleep(1.5)  # a worker that polled would have taken the update by now
        assert not fake.sent("getUpdates") and not fake.sent("setWebhook")
        assert not fake.sent(chat_id=701)

        web = Output(start_bot(fake, db_dsn, tmp_path / "web", "--only", "telegram"))
        await fake.wait_sent("sendPhoto", 701, within=30)
        await web.wait_for("running:")
    finally:
        worker_log = await worker.stop()
        web_log = await web.stop() if web is not None else ""
    assert "started: model=" in worker_log and "started: model=" not in web_log
    assert "roles: worker" in worker_log and "roles: telegram" in web_log
    assert "Traceback" not in worker_log + web_log
    assert len(fake.sent("sendPhoto", 701)) == 1
    assert await pool.fetchval("SELECT status FROM image.generations") == "succeeded"


async def test_a_front_end_alone_runs_no_jobs(fake: FakeTelegram, db_dsn, pool, tmp_path: Path) -> None:
    web = Output(start_bot(fake, db_dsn, tmp_path, "--only", "telegram"))
    try:
        await web.wait_for("running:")
        fake.send(fake.user(702, "Ann"), "/imagine a lighthouse waiting for a worker")
        await fake.wait_sent("sendMessage", 702, within=30)  # accepted and queued
        await asyncio.sleep(1.5)
        assert await pool.fetchval("SELECT status FROM image.generations") == "queued"
    finally:
        log = await web.stop()
    assert "started: model=" not in log and "Traceback" not in log


async def test_a_role_without_its_token_is_one_line_and_exit_1(fake: FakeTelegram, db_dsn, tmp_path: Path) -> None:
    bot = start_bot(fake, db_dsn, tmp_path, "--only", "discord")
    code = await wait_exit(bot)
    output = bot.stdout.read() if bot.stdout else ""
    assert code == 1
    assert "DISCORD_TOKEN" in output and "Traceback" not in output
