"""Provider limits: a ceiling held across processes (Postgres advisory locks), a killed holder's slot
coming back, and the adaptive limit backing off on 429 and Retry-After and growing back on success."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.bootstrap import build_providers
from bot.core.providers.limits import ProviderLimits
from bot.core.providers.runner import ProviderRunner, RetryPolicy
from tests.conftest import make_settings, wait_for
from tests.fakes.a1111_server import FakeA1111, fake_a1111_server, proxy_rate_limited, slow
from tests.fakes.telegram_server import fake_telegram_server
from tests.plugins.providers import spec
from tests.test_run_process import start_bot

REPO = Path(__file__).resolve().parent.parent
POLICY = RetryPolicy(max_retries=3, base_delay=0.01, timeout=10.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeA1111]:
    async with fake_a1111_server() as server:
        yield server


async def start_process(dsn: str, url: str, ceiling: int, calls: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.provider_process", dsn, url, str(ceiling), str(calls),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line.strip() == b"READY", line
    return process


async def go(process: asyncio.subprocess.Process) -> None:
    assert process.stdin is not None
    process.stdin.write(b"GO\n")
    await process.stdin.drain()


async def slots_held(pool: asyncpg.Pool) -> int:
    # Two-key advisory locks (objsubid 2) are the provider slots; the migration lock has one key.
    return await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


async def test_a_ceiling_of_two_holds_across_three_processes(fake: FakeA1111, db_dsn: str) -> None:
    fake.queue(*(slow(0.4) for _ in range(9)))
    processes = [await start_process(db_dsn, fake.base_url, ceiling=2, calls=3) for _ in range(3)]
    try:
        for process in processes:
            await go(process)
        outputs = [await asyncio.wait_for(p.communicate(), 60) for p in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
    assert [out.strip() for out, _ in outputs] == [b"DONE 3"] * 3
    assert len(fake.generation_requests()) == 9
    # Each process alone would send 2 at once: 6 without the shared ceiling.
    assert fake.max_jobs_running == 2


async def test_a_killed_holders_slot_comes_back(fake: FakeA1111, db_dsn: str, pool: asyncpg.Pool) -> None:
    fake.queue(slow(5))
    holder = await start_process(db_dsn, fake.base_url, ceiling=1, calls=1)
    limits = ProviderLimits(8, {"automatic1111": 1}, pool)
    try:
        await go(holder)
        deadline = time.monotonic() + 20
        while await slots_held(pool) < 1:
            assert time.monotonic() < deadline, "the holder never took its slot"
            await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.7), limits.slot("automatic1111"):
                pass
        holder.kill()
        await holder.wait()
        started = time.monotonic()
        async with asyncio.timeout(5), limits.slot("automatic1111"):
            assert await slots_held(pool) == 1
        assert time.monotonic() - started < 3
    finally:
        if holder.returncode is None:
            holder.kill()
        await limits.close()
    assert await slots_held(pool) == 0


async def test_slots_of_one_process_are_not_taken_twice(pool: asyncpg.Pool) -> None:
    # A session may take an advisory lock it already holds: the process's own slots are left out.
    limits = ProviderLimits(8, {"p": 2}, pool)
    inside = 0
    most = 0

    async def call() -> None:
        nonlocal inside, most
        async with limits.slot("p"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.05)
            inside -= 1

    try:
        await asyncio.gather(*(call() for _ in range(6)))
    finally:
        await limits.close()
    assert most == 2
    assert await slots_held(pool) == 0


async def test_a_429_halves_the_limit_and_successes_grow_it_back(fake: FakeA1111, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, a1111_base_url=fake.base_url, a1111_max_concurrency=4)
    provider = build_providers(settings)["automatic1111"]
    limits = ProviderLimits(8, settings.provider_ceilings)
    runner = ProviderRunner(8, POLICY, limits)
    model = next(m for m in settings.models if m.provider == "automatic1111")
    small = model.model_copy(update={"max_images_per_call": 1, "options": {"base_size": 64}})
    adaptive = limits.adaptive("automatic1111")
    try:
        fake.queue(proxy_rate_limited("0"))
        assert all(o.image for o in await runner.run(provider, small, spec(count=1)))
        assert 2 <= adaptive.limit < 3  # halved from 4, then one success

        fake.queue(*(slow(0.2) for _ in range(4)))
        assert all(o.image for o in await runner.run(provider, small, spec(count=4)))
        assert fake.max_jobs_running == 2

        for _ in range(3):
            assert all(o.image for o in await runner.run(provider, small, spec(count=1)))
        assert adaptive.limit == 4  # grown back to the ceiling, and no further
        fake.max_jobs_running = 0
        fake.queue(*(slow(0.2) for _ in range(6)))
        assert all(o.image for o in await runner.run(provider, small, spec(count=6)))
        assert fake.max_jobs_running == 4
    finally:
        await provider.aclose()


async def test_429s_of_one_round_halve_the_limit_once(fake: FakeA1111, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, a1111_base_url=fake.base_url, a1111_max_concurrency=8)
    provider = build_providers(settings)["automatic1111"]
    limits = ProviderLimits(8, settings.provider_ceilings)
    runner = ProviderRunner(8, RetryPolicy(max_retries=0, timeout=10.0), limits)
    model = next(m for m in settings.models if m.provider == "automatic1111")
    small = model.model_copy(update={"max_images_per_call": 1, "options": {"base_size": 64}})
    fake.queue(*(proxy_rate_limited("0") for _ in range(8)))
    try:
        await runner.run(provider, small, spec(count=8))
    finally:
        await provider.aclose()
    assert limits.adaptive("automatic1111").limit == 4


async def test_retry_after_pauses_every_call_to_that_provider(fake: FakeA1111, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, a1111_base_url=fake.base_url, a1111_max_concurrency=4)
    provider = build_providers(settings)["automatic1111"]
    limits = ProviderLimits(8, settings.provider_ceilings)
    runner = ProviderRunner(8, RetryPolicy(max_retries=0, timeout=10.0), limits)
    model = next(m for m in settings.models if m.provider == "automatic1111")
    small = model.model_copy(update={"max_images_per_call": 1, "options": {"base_size": 64}})
    fake.queue(proxy_rate_limited("1"))
    try:
        failed = await runner.run(provider, small, spec(count=1))
        assert failed[0].error is not None and failed[0].error.code == "rate_limited"
        started = time.monotonic()
        assert all(o.image for o in await runner.run(provider, small, spec(count=1)))
        assert time.monotonic() - started >= 0.8
    finally:
        await provider.aclose()


async def test_a_ceiling_of_two_holds_across_three_bot_processes(fake: FakeA1111, db_dsn: str, pool, tmp_path) -> None:
    # Three `python -m bot run` on one database and one bot token, each running one job at a time: without
    # the shared ceiling the server would get three at once.
    async with fake_telegram_server() as telegram:
        fake.queue(*(slow(0.6) for _ in range(6)))
        env = {"A1111_BASE_URL": fake.base_url, "A1111_MAX_CONCURRENCY": "2", "DEFAULT_MODEL": "sd",
               "MAX_JOBS_IN_FLIGHT": "1"}
        bots = []
        for i in range(3):
            (tmp_path / f"p{i}").mkdir()
            bots.append(start_bot(telegram, db_dsn, tmp_path / f"p{i}", **env))
        try:
            for i in range(6):
                telegram.send(telegram.user(600 + i, f"U{i}"), f"/imagine a lighthouse number {i}")
            for i in range(6):
                await telegram.wait_sent("sendPhoto", 600 + i, within=60)
            # A photo goes out while its image is stored; the job is recorded just after.
            await wait_for(lambda: pool.fetchval(
                "SELECT count(*) = 6 FROM image.generations WHERE status = 'succeeded'"
            ))
        finally:
            for bot in bots:
                bot.kill()
                await asyncio.to_thread(bot.wait, 30)
    logs = [bot.stdout.read() if bot.stdout else "" for bot in bots]
    assert fake.max_jobs_running == 2
    assert await pool.fetchval("SELECT count(*) FROM image.generations WHERE status = 'succeeded'") == 6
    assert sum(1 for log in logs if "started: model=sd" in log) >= 2  # the jobs really ran in several processes
