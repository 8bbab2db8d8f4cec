"""The bot under test in the burst scenario, in a process of its own (so its RSS and CPU are its own, not
the platform fakes'): the real runtime and both real front ends, as `run` starts them
(bot.launcher), pointed at the fake Discord and fake Telegram the parent process serves, with the
stand-in provider plugged in.

`python -m bench.burst_bot CONFIG.json`. Talks to the parent by lines: prints `READY {...}` once both
front ends and the worker are running; reads `GO` (the burst starts: CPU is counted and, if asked, the
profiler runs from here) and `STOP` (or end of input: shut down as the launcher does), then prints
`DONE <file>` (a JSON file with its own measurements) and exits. A watchdog ends it even if the parent
never says STOP.

Besides CPU, it reports its event loop's lag (a 10 ms timer's lateness), its garbage collector's pauses,
when each provider call ran, and timestamps of the steps between an event and its first answer (`Trace`).
What-ifs (`experiments` in the config, from BENCH_EXPERIMENTS; all off by default) try changes to the bot
from outside it, without editing it: gc_freeze, prewarm_discord_connections=N, worker_own_pool=N,
accept_concurrency=N, telegram_concurrent_updates=N, telegram_chat_action_first."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from bench.core_scenarios import bench_settings
from bench.standin import StandInProvider
from bot.adapters.discord.frontend import DiscordFrontEnd
from bot.adapters.telegram.frontend import TelegramFrontEnd
from bot.bootstrap import Runtime, bootstrap
from bot.core import database
from bot.core.providers.base import GeneratedImage, PreviewCallback, ProviderCall
from bot.logs import setup_logging
from tests.fakes.discord_server import point_discord_py_at

LAG_TICK_SECONDS = 0.01


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any]) -> None:
    settings = bench_settings(Path(config["data_dir"]), config["dsn"], **config["settings"])
    setup_logging(settings)
    provider = TimedStandIn(latency=float(config["latency"]))
    watchdog = float(config.get("watchdog_seconds", 900))
    fake_discord = SimpleNamespace(api_url=config["discord_api_url"], gateway_url=config["discord_gateway_url"])
    trace = Trace()
    with pytest.MonkeyPatch.context() as patch:
        point_discord_py_at(fake_discord, patch)  # type: ignore[arg-type]
        _experiments_before_build(config, patch)
        trace.install(patch)  # before the front ends are built: discord.py binds its parsers then
        # guild_ready_timeout: discord.py waits this long after READY for guilds the fake never sends.
        front_ends = [
            lambda settings, service, accounts: DiscordFrontEnd(settings, service, accounts, guild_ready_timeout=0.01),
            TelegramFrontEnd,
        ]
        async with contextlib.AsyncExitStack() as cleanup, bootstrap(
            settings, front_ends, extra_providers={"standin": provider}
        ) as runtime:
            discord_front = runtime.front_ends[0]
            assert isinstance(discord_front, DiscordFrontEnd)
            await runtime.start_front_ends()
            await _experiments_before_start(config, runtime, cleanup)
            await runtime.start()
            await _experiments_when_ready(config, discord_front)
            say("READY " + json.dumps({"pid": os.getpid(), "rss_mb": _rss_mb()}))
            stats = await _serve(config, provider, watchdog)
            await runtime.stop_taking_work()
    # The kernel's high-water mark of this process image. (Not getrusage's ru_maxrss: after fork + exec it
    # still holds the parent's size at the fork, and the parent holds the fakes.)
    stats["vm_hwm_mb"] = _vm_hwm_mb()
    stats["trace"] = trace.marks
    stats["experiments"] = config.get("experiments") or {}
    # The measurements are long (every loop-lag tick): a file, and its name on the line.
    out = Path(config["data_dir"]) / "burst-bot-stats.json"
    out.write_text(json.dumps(stats))
    say(f"DONE {out}")


@dataclass
class TimedStandIn(StandInProvider):
    """The stand-in provider, remembering when each call started and ended (time.monotonic)."""

    spans: list[tuple[float, float]] = field(default_factory=list)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        started = time.monotonic()
        try:
            return await super().generate(call, on_preview)
        finally:
            self.spans.append((started, time.monotonic()))


def _experiments_before_build(config: dict[str, Any], patch: pytest.MonkeyPatch) -> None:
    """What-ifs the parent may ask for (all off by default): changes to the bot, tried from outside it."""
    experiments = config.get("experiments") or {}
    updates = int(experiments.get("telegram_concurrent_updates", 0))
    if updates:
        import bot.adapters.telegram.frontend as telegram_frontend

        patch.setattr(telegram_frontend, "CONCURRENT_UPDATES", updates)
    if experiments.get("telegram_chat_action_first"):
        # A first sign of life ("typing…") before the request is accepted (the database work).
        from bot.adapters.telegram.handlers import TelegramHandlers

        imagine = TelegramHandlers._imagine

        async def acting_first(handlers: Any, update: Any, message: Any, text: str) -> None:
            with contextlib.suppress(Exception):
                await handlers.sender.bot.send_chat_action(message.chat.id, "typing")
            await imagine(handlers, update, message, text)

        patch.setattr(TelegramHandlers, "_imagine", acting_first)


async def _experiments_before_start(
    config: dict[str, Any], runtime: Runtime, cleanup: contextlib.AsyncExitStack
) -> None:
    experiments = config.get("experiments") or {}
    own = int(experiments.get("worker_own_pool", 0))
    if own:
        # The worker's claims and deliveries don't queue behind request handling for a pool connection.
        pool = await database.create_pool(config["dsn"], own)
        cleanup.push_async_callback(pool.close)
        runtime.worker.pool = pool
    gate_size = int(experiments.get("accept_concurrency", 0))
    if gate_size:
        # At most this many requests being accepted (DB + "queued" notice) at once: under a burst the
        # acknowledgements of the later requests don't wait behind the earlier ones' acceptance.
        gate = asyncio.Semaphore(gate_size)
        imagine = runtime.service.imagine

        async def gated(*args: Any, **kwargs: Any) -> Any:
            async with gate:
                return await imagine(*args, **kwargs)

        runtime.service.imagine = gated  # type: ignore[method-assign]


async def _experiments_when_ready(config: dict[str, Any], discord_front: DiscordFrontEnd) -> None:
    experiments = config.get("experiments") or {}
    warm = int(experiments.get("prewarm_discord_connections", 0))
    if warm:
        # As a bot that has been busy would have: idle keep-alive connections to the API in discord.py's pool.
        session = discord_front.client.http._HTTPClient__session  # type: ignore[attr-defined]
        url = config["discord_api_url"] + "/gateway"

        async def get() -> None:
            async with session.get(url) as response:
                await response.read()

        await asyncio.gather(*(get() for _ in range(warm)))
    if experiments.get("gc_freeze"):
        # Everything built at start-up moves out of the collector's sight: full collections get cheap.
        gc.collect()
        gc.freeze()


class Trace:
    """Timestamps (time.monotonic, comparable with the parent's) of the steps inside the bot between a
    platform event and its first answer, keyed as the parent knows the event:
    discord: interaction id -> [event read, acknowledgement sent off] (bot.adapters.discord.acks);
    telegram: "chat:message" -> [handler started, on_queued called]."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, list[float]]] = {"discord": {}, "telegram": {}}

    def _mark(self, platform: str, key: str) -> None:
        self.marks[platform].setdefault(key, []).append(time.monotonic())

    def install(self, patch: pytest.MonkeyPatch) -> None:
        from bot.adapters.discord.acks import EarlyAcks
        from bot.adapters.telegram.delivery import TelegramObserver
        from bot.adapters.telegram.handlers import TelegramHandlers

        mark = self._mark
        on_interaction = EarlyAcks._on_interaction
        imagine = TelegramHandlers._imagine
        on_queued = TelegramObserver.on_queued

        def acknowledging(acks: Any, data: Any) -> None:
            key = str(data["id"])
            mark("discord", key)
            on_interaction(acks, data)
            mark("discord", key)

        async def imagining(handlers: Any, update: Any, message: Any, text: str) -> None:
            mark("telegram", f"{message.chat.id}:{message.message_id}")
            await imagine(handlers, update, message, text)

        async def queued(observer: Any, job: Any, position: int) -> str | None:
            mark("telegram", f"{job.destination.chat_id}:{job.destination.context.get('reply_to')}")
            return await on_queued(observer, job, position)

        patch.setattr(EarlyAcks, "_on_interaction", acknowledging)
        patch.setattr(TelegramHandlers, "_imagine", imagining)
        patch.setattr(TelegramObserver, "on_queued", queued)


async def _serve(config: dict[str, Any], provider: TimedStandIn, watchdog: float) -> dict[str, Any]:
    """Wait for GO, measure until STOP (or end of input, or the watchdog)."""
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_lines() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "STOP")

    threading.Thread(target=read_lines, name="parent-lines", daemon=True).start()
    deadline = time.monotonic() + watchdog

    async def next_line() -> str:
        try:
            return await asyncio.wait_for(lines.get(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return "STOP"

    while (line := await next_line()) not in ("GO", "STOP"):
        pass
    if line == "STOP":
        return {"burst": False}
    profiling = _Profiling(config.get("profile"), float(config.get("profile_seconds") or 0))
    profiling.start()
    if config.get("slow_callback_ms"):
        # asyncio's debug mode logs every callback that holds the loop longer than this (and slows it a bit).
        loop.set_debug(True)
        loop.slow_callback_duration = float(config["slow_callback_ms"]) / 1000
    cpu_before = _cpu_seconds()
    wall_before = time.monotonic()
    lags: list[tuple[float, float]] = []
    lag_task = asyncio.create_task(loop_lag(lags))
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    say("GOING")
    profiled = asyncio.create_task(profiling.window())
    while await next_line() != "STOP":
        pass
    profiled.cancel()
    lag_task.cancel()
    gc.callbacks.remove(pauses)
    cpu = _cpu_seconds() - cpu_before
    wall = time.monotonic() - wall_before
    profiling.stop()
    return {
        "burst": True,
        "cpu_s": cpu,
        "wall_s": wall,
        "provider_calls": provider.calls,
        "provider_spans": [(round(a, 4), round(b, 4)) for a, b in provider.spans],
        "gc_pauses": pauses.summary(),
        "loop_lags": [(round(at, 4), round(lag * 1000, 2)) for at, lag in lags],
        "profile_breakdown_s": profiling.breakdown,
    }


class _GcPauses:
    """How long the garbage collector held the (only) thread, per generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.monotonic(), time.perf_counter() - self.started))

    def summary(self) -> dict[str, Any]:
        return {
            f"gen{generation}": {
                "count": len(pauses),
                "total_ms": round(sum(p for _, p in pauses) * 1000, 1),
                "max_ms": round(max((p for _, p in pauses), default=0.0) * 1000, 1),
                "over_20ms_at": [round(at, 3) for at, p in pauses if p > 0.02],
            }
            for generation, pauses in self.pauses.items()
        }


async def loop_lag(lags: list[tuple[float, float]]) -> None:
    """How late the event loop runs a 10 ms timer (time.monotonic when it ran, seconds late): how long
    every callback waits behind others' work."""
    while True:
        asked = time.monotonic()
        await asyncio.sleep(LAG_TICK_SECONDS)
        now = time.monotonic()
        lags.append((now, max(0.0, now - asked - LAG_TICK_SECONDS)))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _vm_hwm_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class _Profiling:
    """pyinstrument over the whole event loop (all tasks), from GO to STOP or for `profile_seconds` only
    (the arrival). Writes the text profile to `path` and keeps the time by activity (the session itself,
    every sample, is ~100 MB for a burst: not kept)."""

    def __init__(self, path: str | None, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.profiler: Any = None
        self.breakdown: dict[str, float] | None = None

    def start(self) -> None:
        if not self.path:
            return
        from pyinstrument import Profiler

        self.profiler = Profiler(interval=0.001, async_mode="disabled")
        self.profiler.start()

    async def window(self) -> None:
        if self.profiler is not None and self.seconds:
            await asyncio.sleep(self.seconds)
            self.stop()

    def stop(self) -> None:
        if self.profiler is None or not self.profiler.is_running or not self.path:
            return
        self.profiler.stop()
        Path(self.path).write_text(self.profiler.output_text(unicode=True, show_all=False))
        from bench.profile_summary import summarize

        self.breakdown = summarize(self.profiler.last_session)


if __name__ == "__main__":
    logging.captureWarnings(True)
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))

