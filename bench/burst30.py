"""Scenario burst30: 30 users at once, one /imagine each (15 as Discord interactions, 15 as Telegram
updates), a 2 s stand-in provider, and the bot with its shipped DEFAULT limits (MAX_PROVIDER_CALLS,
MAX_JOBS_IN_FLIGHT, PER_USER_JOBS_IN_FLIGHT, WORKER_POLL_SECONDS): whether the defaults throttle a crowd
the provider could take. The same bot process, fakes and clocks as burst.py.

- Time to image: from the event (gateway send / update queued) to the fake receiving the final image.
- Bot CPU per image: the bot process's CPU from just before the burst until every image was delivered
  (and the bot told to stop), divided by the images delivered; Postgres and the fakes not counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.burst import (
    CONCURRENT_CAP_S,
    LATENCY_S,
    _bot_process,
    _emit,
    _wait_for_results,
    _warm_up,
)
from bench.core_scenarios import percentile
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.telegram_server import fake_telegram_server

USERS_PER_PLATFORM = 15
# Only what the bench needs that is not a limit: the shipped worker poll (bench_settings shortens it).
SETTINGS: dict[str, Any] = {"worker_poll_seconds": 1.0, "shutdown_grace_seconds": 5.0}


async def burst30(data_dir: Path, dsn: str) -> dict[str, Any]:
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    discord = FakeDiscord()
    await discord.start()
    try:
        async with fake_telegram_server() as telegram, _bot_process(
            data_dir, dsn, discord, telegram, SETTINGS, None
        ) as bot:
            await asyncio.wait_for(discord.connected.wait(), 10)
            await _warm_up(discord, telegram)
            await bot.go()
            events = await _emit(discord, telegram, USERS_PER_PLATFORM, ("discord", "telegram"), per_user=1)
            first = min(e.emitted for e in events)
            measured = await _wait_for_results(discord, telegram, events, first + CONCURRENT_CAP_S)
            stats = await bot.stop()
    finally:
        await discord.stop()
    by_key = {e.key: e for e in events}
    times = [at - by_key[key].emitted for key, at in measured.delivered.items()]
    delivered = len(measured.delivered)
    cpu = float(stats.get("cpu_s", float("nan")))
    return {
        "scenario": f"burst30 ({len(events)} users at once, 1 each, default settings)",
        "events": len(events),
        "delivered": delivered,
        "time_to_image_p50_s": percentile(times, 50),
        "time_to_image_p99_s": percentile(times, 99),
        "bot_cpu_ms_per_image": cpu * 1000 / delivered if delivered else float("nan"),
        "details": {
            "provider_latency_s": LATENCY_S,
            "time_to_image_max_s": max(times, default=float("nan")),
            "bot_cpu_s": cpu,
            "settings": SETTINGS,
        },
    }
