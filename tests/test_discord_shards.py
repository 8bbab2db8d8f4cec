"""Discord with real `python -m bot run` processes against the local Discord server: two processes with one
shard each, each server's commands answered by exactly one of them; a front end and a worker that never
connects to the gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import make_settings, wait_for
from tests.fakes.discord_harness import finished
from tests.fakes.discord_server import CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, FakeDiscord
from tests.test_roles import Output

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def start_discord(fake: FakeDiscord, dsn: str, data_dir: Path, *args: str, **env: str) -> Output:
    """`python -m bot run *args` against the fake Discord (see tests.fakes.discord_process)."""
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY"))}
    data_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.discord_process", "run", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=data_dir,
        env={**clean, "PYTHONPATH": str(REPO), "DATA_DIR": str(data_dir), "DATABASE_URL": dsn,
             "LOG_LEVEL": "INFO", "DISCORD_TOKEN": fake.token, "FAKE_DISCORD_API": fake.api_url,
             "FAKE_DISCORD_GATEWAY": fake.gateway_url, "WORKER_POLL_SECONDS": "0.1", **env},
    )
    return Output(process)


def start_shard(fake: FakeDiscord, dsn: str, data_dir: Path, shard_id: int, shard_count: int) -> Output:
    return start_discord(
        fake, dsn, data_dir, DISCORD_SHARD_COUNT=str(shard_count), DISCORD_SHARD_IDS=str(shard_id)
    )


async def test_two_processes_with_one_shard_each_serve_each_guild_once(
    fake: FakeDiscord, db_dsn: str, tmp_path: Path
) -> None:
    guilds = [fake.add_guild(shard, 2) for shard in (0, 1)]
    shards = [start_shard(fake, db_dsn, tmp_path / f"shard{i}", i, 2) for i in (0, 1)]
    logs: list[str] = []
    try:
        for shard in shards:
            await shard.wait_for("running:")
        ann = fake.user("ann")
        commands = [
            await fake.slash("imagine", {"prompt": f"a lighthouse in guild {i}"}, user=ann, guild_id=guild)
            for i, guild in enumerate(guilds)
        ]
        for interaction in commands:
            await wait_for(finished(fake, interaction), within=30)
    finally:
        for shard in shards:
            logs.append(await shard.stop())
    assert sorted(tuple(identify["shard"]) for identify in fake.identifies) == [(0, 2), (1, 2)]
    for interaction in commands:
        acks = [r for r in fake.requests_for(interaction) if r.callback_type is not None]
        assert [r.callback_type for r in acks] in ([DEFERRED_CHANNEL_MESSAGE], [CHANNEL_MESSAGE]), acks
        assert all(r.status < 400 for r in acks)
    assert all("Traceback" not in log for log in logs), logs
    # Each process took the command of its own guild's shard, and only that one.
    assert [log.count("accepted: imagine") for log in logs] == [1, 1], logs


def test_shard_ids_need_a_count_they_are_below(tmp_path: Path) -> None:
    assert make_settings(tmp_path, discord_shard_count=4, discord_shard_ids="1,3").discord_shard_ids == [1, 3]
    for wrong in ({"discord_shard_ids": "0"}, {"discord_shard_count": 2, "discord_shard_ids": "2"}):
        with pytest.raises(ValidationError, match="DISCORD_SHARD"):
            make_settings(tmp_path, **wrong)


async def test_a_discord_front_end_and_a_worker_over_rest_deliver_together(
    fake: FakeDiscord, db_dsn: str, tmp_path: Path
) -> None:
    worker = start_discord(fake, db_dsn, tmp_path / "worker", "--only", "worker")
    web = start_discord(fake, db_dsn, tmp_path / "web", "--only", "discord")
    try:
        await worker.wait_for("running:")
        await web.wait_for("running:")
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse"}, user=fake.user("ann"))
        await wait_for(finished(fake, interaction), within=30)
    finally:
        worker_log = await worker.stop()
        web_log = await web.stop()
    assert len(fake.identifies) == 1  # the worker never connected to the gateway
    assert "started: model=" in worker_log and "started: model=" not in web_log
    assert "accepted: imagine" in web_log
    assert "Traceback" not in worker_log + web_log
