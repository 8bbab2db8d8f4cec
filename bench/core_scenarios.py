"""Benchmark scenarios on the core alone: overhead per generation, the extra of an edit's input picture,
throughput ceiling, start-up and idle RSS."""

from __future__ import annotations

import asyncio
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from PIL import Image

from bench.standin import BENCH_MODEL, StandInProvider
from bot.bootstrap import Runtime, bootstrap
from bot.config import Settings
from bot.core.events import DeliveryReceipt
from bot.core.input_images import UploadedImage
from bot.core.models import Destination, Generation, ImageFile, ImagineRequest, UserIdentity


@dataclass
class TimingObserver:
    """Records when each job was accepted and when its result reached the front end."""

    platform: str = "bench"
    completed_at: dict[str, float] = field(default_factory=dict)
    first_reaction_at: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    async def on_queued(self, job: Generation, position: int) -> str | None:
        self.first_reaction_at.setdefault(job.id, time.perf_counter())
        return None

    async def on_started(self, job: Generation) -> None:
        return None

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        return None

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        self._finish(job)
        return None

    async def on_failed(self, job: Generation) -> None:
        self._finish(job)

    async def on_cancelled(self, job: Generation) -> None:
        self._finish(job)

    def _finish(self, job: Generation) -> None:
        self.completed_at[job.id] = time.perf_counter()
        if self.expected and len(self.completed_at) >= self.expected:
            self.done.set()


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "models": (BENCH_MODEL,),
        "default_model": "standin",
        "starting_credits": 1_000_000,
        "per_user_queued_limit": 1000,
        "requests_per_minute": 10_000,
        "worker_poll_seconds": 0.05,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def bench_runtime(settings: Settings, provider: StandInProvider) -> AsyncIterator[tuple[Runtime, TimingObserver]]:
    observer = TimingObserver()
    async with bootstrap(settings, extra_providers={"standin": provider}) as runtime:
        runtime.register(observer)
        await runtime.start()
        yield runtime, observer


async def overhead(data_dir: Path, dsn: str, count: int, store: str, s3: dict[str, Any], jobs: int) -> dict[str, Any]:
    """End-to-end time of one generation at a time, minus the time spent inside the provider: until the result
    reaches the front end (what the user waits for), and until the job is recorded with its images stored
    (history and the buttons wait for that; the images are shown while they are being stored)."""
    provider = StandInProvider(latency=0.2)
    settings = bench_settings(data_dir, dsn, storage_backend=store, **(s3 if store == "s3" else {}))
    added: list[float] = []
    recorded: list[float] = []
    async with bench_runtime(settings, provider) as (runtime, observer):
        who = UserIdentity("bench", "overhead")
        for i in range(jobs + 3):
            calls_before = len(provider.call_seconds)
            started = time.perf_counter()
            accepted = await runtime.service.imagine(
                who, ImagineRequest(f"overhead {i}", count=count), Destination("bench", "c")
            )
            observer.expected = len(observer.completed_at) + 1
            observer.done.clear()
            await observer.done.wait()
            await runtime.worker.wait_for_records([accepted.generation.id])
            recorded_at = time.perf_counter()
            elapsed = observer.completed_at[accepted.generation.id] - started
            provider_time = max(provider.call_seconds[calls_before:], default=0.0)  # calls run in parallel
            if i >= 3:  # the first few warm caches and connections
                added.append(elapsed - provider_time)
                recorded.append(recorded_at - started - provider_time)
    return {
        "scenario": f"overhead n={count} {store}",
        "added_p50_ms": percentile(added, 50) * 1000,
        "added_p99_ms": percentile(added, 99) * 1000,
        "recorded_p50_ms": percentile(recorded, 50) * 1000,
        "recorded_p99_ms": percentile(recorded, 99) * 1000,
        "samples": len(added),
    }


def photo_of_about(megabytes: float = 2.0) -> bytes:
    """A JPEG of about this size with a camera photo's texture (smooth noise, 4:3): what a phone sends."""
    rng = random.Random(7)
    width, height = 2800, 2100  # about 2 MB at quality 80 with this texture
    small = Image.frombytes("RGB", (width // 4, height // 4), rng.randbytes(width // 4 * (height // 4) * 3))
    out = io.BytesIO()
    small.resize((width, height), Image.Resampling.BICUBIC).save(out, format="JPEG", quality=80)
    return out.getvalue()


async def edit(data_dir: Path, dsn: str, jobs: int) -> dict[str, Any]:
    """What an edit's input picture adds to a request, end to end minus the provider's time: downloading a
    2 MB photo over HTTP (from 127.0.0.1, as a front end fetches an attachment), checking and normalising
    it, storing it and recording it with the job, and the worker reading it back for the provider.
    Plain requests and edits alternate, so both see the same machine."""
    photo = photo_of_about(2.0)
    app = web.Application()
    app.router.add_get("/photo.jpg", lambda request: web.Response(body=photo, content_type="image/jpeg"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider = StandInProvider(latency=0.2)
    editing = BENCH_MODEL.model_copy(update={"supports_input_image": True})
    settings = bench_settings(data_dir, dsn, models=(editing,))
    times: dict[str, list[float]] = {"plain": [], "edit": []}
    try:
        async with bench_runtime(settings, provider) as (runtime, observer), aiohttp.ClientSession() as http:
            who = UserIdentity("bench", "edit")
            for i in range(jobs + 3):
                for kind in ("plain", "edit"):
                    calls_before = len(provider.call_seconds)
                    started = time.perf_counter()
                    inputs = []
                    if kind == "edit":
                        async with http.get(f"http://127.0.0.1:{port}/photo.jpg") as response:
                            inputs = [UploadedImage(await response.read(), "photo.jpg", "image/jpeg")]
                    observer.expected = len(observer.completed_at) + 1
                    observer.done.clear()
                    accepted = await runtime.service.imagine(
                        who, ImagineRequest(f"{kind} {i}"), Destination("bench", "c"), inputs=inputs
                    )
                    await observer.done.wait()
                    elapsed = observer.completed_at[accepted.generation.id] - started
                    if i >= 3:
                        times[kind].append(elapsed - max(provider.call_seconds[calls_before:], default=0.0))
    finally:
        await runner.cleanup()
    return {
        "scenario": f"edit, {len(photo) / 2**20:.1f} MB input",
        "edit_extra_p50_ms": (percentile(times["edit"], 50) - percentile(times["plain"], 50)) * 1000,
        "edit_p50_ms": percentile(times["edit"], 50) * 1000,
        "edit_p99_ms": percentile(times["edit"], 99) * 1000,
        "plain_p50_ms": percentile(times["plain"], 50) * 1000,
        "samples": len(times["edit"]),
    }


async def throughput(data_dir: Path, dsn: str, jobs: int, users: int, profile: Path | None) -> dict[str, Any]:
    """Generations per second with an instant provider: the bot's own ceiling."""
    provider = StandInProvider(latency=0.0)
    settings = bench_settings(data_dir, dsn, max_jobs_in_flight=64, max_provider_calls=64,
                              per_user_jobs_in_flight=64, db_pool_max_size=20)
    async with bench_runtime(settings, provider) as (runtime, observer):
        observer.expected = jobs
        profiler = _start_profiler(profile)
        cpu_before = _cpu_seconds()
        started = time.perf_counter()

        async def user(u: int) -> None:
            who = UserIdentity("bench", f"t{u}")
            for i in range(jobs // users):
                await runtime.service.imagine(who, ImagineRequest(f"throughput {u} {i}"), Destination("bench", "c"))

        await asyncio.gather(*(user(u) for u in range(users)))
        await asyncio.wait_for(observer.done.wait(), 600)
        elapsed = time.perf_counter() - started
        cpu_after = _cpu_seconds()
        _stop_profiler(profiler, profile)
    return {
        "scenario": "throughput (instant provider)",
        "generations_per_s": jobs / elapsed,
        "bot_cpu_ms_per_job": (cpu_after[0] - cpu_before[0]) / jobs * 1000,
        "postgres_cpu_ms_per_job": (cpu_after[1] - cpu_before[1]) / jobs * 1000,
        "jobs": jobs,
        "seconds": elapsed,
        "profile": str(profile) if profile else None,
    }


def startup_and_idle(data_dir: Path, dsn: str) -> dict[str, Any]:
    """Time from process start to serving a command, and the resident memory once idle."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": dsn, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "console"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env, cwd=data_dir,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("/balance\n")
    process.stdin.flush()
    for line in process.stdout:
        if line.startswith("Balance:") or line.startswith("Credits are off"):
            break
    ready = time.perf_counter() - started
    time.sleep(2.0)
    rss = psutil.Process(process.pid).memory_info().rss
    process.stdin.close()
    process.wait(30)
    return {"scenario": "start-up and idle", "startup_s": ready, "idle_rss_mb": rss / 2**20}


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (all threads) and by every Postgres server process."""
    own = psutil.Process().cpu_times()
    postgres = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            postgres += times.user + times.system
    return own.user + own.system, postgres


def _start_profiler(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: no profile (pip install pyinstrument)", file=sys.stderr)
        return None
    profiler = Profiler(async_mode="disabled")
    profiler.start()
    return profiler


def _stop_profiler(profiler: Any, path: Path | None) -> None:
    if profiler is None or path is None:
        return
    profiler.stop()
    path.write_text(profiler.output_text(unicode=True, show_all=False))
