"""Scenarios 3 and 4: a burst of /imagine from many users at once, half as Discord interactions and half
as Telegram updates, through the real front ends (discord.py and python-telegram-bot) against the same
platform stand-ins the adapter tests use, with a 2 s stand-in provider.

The bot runs in a subprocess of its own (bench/burst_bot.py), so that its peak RSS and CPU are the bot's
alone: the fakes (which keep every uploaded image) and Postgres live elsewhere (on the same cores, though).
Everything is measured here, on the fakes' side of the wire, with one clock (time.monotonic is system-wide
on Linux):

- Discord acknowledgement: from sending INTERACTION_CREATE on the gateway to the fake receiving the
  interaction callback (the deferral).
- Telegram first reaction: from getUpdates handing the update to the bot to the fake receiving the first
  sign of it: a chat action in its chat (sent after the hand-out; Telegram shows it ~5 s) or the message
  replying to it (the "Queued" status), whichever came first. In the details also: the status message
  alone, from the update being queued in the fake, and per chat: first update handed out to the first
  chat action or message in that chat.
- Delivery: from the event to the fake receiving the final image (Discord: the edit of the deferred message
  carrying the file; Telegram: the sendPhoto replying to the user's message). `delivered` counts the
  events whose final image the fakes received (all of them when nothing is lost).
- Peak RSS of the bot process: sampled every 50 ms by a thread here (and the kernel's VmHWM, details).
- The bot reports its CPU, its event loop's lag, its GC pauses, when the provider ran, and timestamps of
  the steps between an event and its first answer (details: ack_steps, tg_reaction_steps).

Scenario 4 runs the same burst against one job at a time (how most bots work) for the wall-clock budget the
concurrent run took (plus a margin), then stops: 500 × 2 s would take over 16 minutes.

Diagnostics, all off by default (environment variables, so `python -m bench` stays as it is):
BENCH_BURST_PLATFORMS=discord|telegram (one platform's half only); BENCH_BURST_USERS=100 (users per platform,
each sending PER_USER requests; 50 by default); BENCH_EXPERIMENTS='{"gc_freeze": true}'
(what-ifs for the bot, tried from outside it: see burst_bot.py); BENCH_PROFILE_SECONDS=3 (with --profile:
only the arrival); BENCH_SLOW_CALLBACK_MS=50 (asyncio's slow-callback log); BENCH_KEEP_BOT_LOG=path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.burst_bot import loop_lag
from bench.core_scenarios import _cpu_seconds, percentile
from tests.fakes.discord_server import FakeDiscord, FakeInteraction, Recorded
from tests.fakes.telegram_server import ApiCall, FakeTelegram, fake_telegram_server

REPO = Path(__file__).resolve().parent.parent
LATENCY_S = 2.0
PER_USER = 5  # /imagine each user sends
CONCURRENT = {"max_provider_calls": 64, "max_jobs_in_flight": 64, "per_user_jobs_in_flight": PER_USER}
FIFO = {"max_provider_calls": 1, "max_jobs_in_flight": 1, "per_user_jobs_in_flight": 1}
COMMON = {
    "per_user_queued_limit": 10,
    "requests_per_minute": 10_000,
    "starting_credits": 1_000_000,
    "shutdown_grace_seconds": 5.0,
}
STARTUP_TIMEOUT_S = 90.0
CONCURRENT_CAP_S = 240.0  # the concurrent run gives up after this (it should take ~20 s)
POLL_S = 0.1
ARRIVAL_S = 3.0  # the first seconds of the burst, while requests arrive and are acknowledged
RSS_EVERY_S = 0.05


@dataclass
class Event:
    platform: str
    emitted: float  # when the event left the fake (gateway send / queued for getUpdates)
    key: Any  # Discord: the interaction token; Telegram: (chat id, message id)
    ident: str  # how the bot's trace names it: the interaction id; "chat:message"
    update_id: int | None = None


@dataclass
class Measured:
    acks: dict[str, Recorded] = field(default_factory=dict)  # token -> its callback request
    reactions: dict[tuple[int, int], float] = field(default_factory=dict)
    delivered: dict[Any, float] = field(default_factory=dict)
    chat_reactions: dict[int, float] = field(default_factory=dict)  # chat -> first chat action or message
    chat_actions: dict[int, list[float]] = field(default_factory=dict)  # chat -> every chat action, in order
    errors: int = 0


async def burst(
    data_dir: Path,
    dsn: str,
    *,
    fifo: bool,
    quick: bool,
    budget_s: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One burst; returns its table row. `budget_s` (FIFO only): how long to let it run."""
    users_per_platform = 10 if quick else int(os.environ.get("BENCH_BURST_USERS", 50))
    platforms = tuple(os.environ.get("BENCH_BURST_PLATFORMS", "discord,telegram").split(","))
    events_total = len(platforms) * users_per_platform * PER_USER
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    discord = FakeDiscord()
    await discord.start()
    try:
        async with fake_telegram_server() as telegram:
            handed_out = _record_hand_outs(telegram)
            settings = {**COMMON, **(FIFO if fifo else CONCURRENT)}
            async with _bot_process(data_dir, dsn, discord, telegram, settings, profile) as bot:
                sampler = _RssSampler(bot.pid)
                sampler.start()
                await asyncio.wait_for(discord.connected.wait(), 10)
                await _warm_up(discord, telegram)
                fakes_lag: list[tuple[float, float]] = []
                lag_task = asyncio.create_task(loop_lag(fakes_lag))
                try:
                    await bot.go()
                    rss_before = sampler.latest()
                    cpu_before = _cpu_seconds()
                    events = await _emit(discord, telegram, users_per_platform, platforms)
                    first = min(e.emitted for e in events)
                    if fifo:
                        budget = budget_s if budget_s is not None else _ideal_seconds(events_total) + 2.0
                        deadline = first + budget
                    else:
                        deadline = first + CONCURRENT_CAP_S
                    measured = await _wait_for_results(discord, telegram, events, deadline)
                    cpu_after = _cpu_seconds()
                    stats = await bot.stop()
                finally:
                    lag_task.cancel()
                    sampler.stop()
                stats["fakes_cpu_s"] = cpu_after[0] - cpu_before[0]  # this process: the fakes (and the bench)
                stats["postgres_cpu_s"] = cpu_after[1] - cpu_before[1]
                stats["fakes_lags"] = [(at, lag * 1000) for at, lag in fakes_lag]
    finally:
        await discord.stop()
        if os.environ.get("BENCH_KEEP_BOT_LOG"):
            await asyncio.to_thread(shutil.copyfile, data_dir / "burst-bot.log", os.environ["BENCH_KEEP_BOT_LOG"])
    return _row(fifo, events, measured, handed_out, first, deadline, sampler, rss_before, stats, profile)


# --- the bot process -------------------------------------------------------------------------------


class _BotProcess:
    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.pid = process.pid

    async def line(self, prefix: str, within: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"bench bot: no {prefix} within {within:.0f} s\n{self._log_tail()}")
            raw = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            if not raw:
                raise RuntimeError(f"bench bot exited before {prefix}\n{self._log_tail()}")
            text = raw.decode().strip()
            if text.startswith(prefix):
                return text[len(prefix) :].strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())

    async def go(self) -> None:
        self.send("GO")
        await self.line("GOING", 10)

    async def stop(self) -> dict[str, Any]:
        self.send("STOP")
        assert self.process.stdin is not None
        self.process.stdin.close()
        stats_file = Path(await self.line("DONE", 60))
        stats = json.loads(await asyncio.to_thread(stats_file.read_text))
        await asyncio.wait_for(self.process.wait(), 30)
        return stats

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def _bot_process(
    data_dir: Path, dsn: str, discord: FakeDiscord, telegram: FakeTelegram, settings: dict[str, Any],
    profile: Path | None,
) -> Any:
    config = {
        "data_dir": str(data_dir),
        "dsn": dsn,
        "latency": LATENCY_S,
        "settings": {
            **settings,
            "discord_token": discord.token,
            "telegram_token": telegram.token,
            "telegram_base_url": telegram.base_url,
            "telegram_base_file_url": telegram.base_file_url,
        },
        "discord_api_url": discord.api_url,
        "discord_gateway_url": discord.gateway_url,
        "profile": str(profile) if profile else None,
        "watchdog_seconds": 600,
        # Diagnostics (see the module's docstring), off by default.
        "slow_callback_ms": float(os.environ.get("BENCH_SLOW_CALLBACK_MS", 0)),
        "profile_seconds": float(os.environ.get("BENCH_PROFILE_SECONDS", 0)),
        "experiments": json.loads(os.environ.get("BENCH_EXPERIMENTS", "{}")),
    }
    config_path = data_dir / "burst-bot.json"
    config_path.write_text(json.dumps(config))
    log = data_dir / "burst-bot.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.burst_bot", str(config_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr, cwd=REPO,
        )
    bot = _BotProcess(process, log)
    try:
        await bot.line("READY", STARTUP_TIMEOUT_S)
        yield bot
    finally:
        if process.returncode is None:
            process.kill()  # only on failure: stop() waits for a clean exit
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 10)


class _RssSampler:
    """The bot process's resident memory every 50 ms, from a thread (a busy event loop can't delay it)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.samples.append((time.monotonic(), self.process.memory_info().rss))

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            self._sample()

    def latest(self) -> int:
        return self.samples[-1][1]

    def peak(self, since: float, until: float) -> int:
        return max((rss for at, rss in self.samples if since <= at <= until), default=0)

    def peak_at(self) -> tuple[float, int]:
        return max(self.samples, key=lambda sample: sample[1])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- driving the fakes ---------------------------------------------------------------------------


def _record_hand_outs(telegram: FakeTelegram) -> dict[int, float]:
    """When getUpdates first handed each update to the bot."""
    handed_out: dict[int, float] = {}
    serve = telegram._api_getUpdates

    async def recording(call: ApiCall) -> list[dict[str, Any]]:
        updates = await serve(call)
        now = time.monotonic()
        for update in updates:
            handed_out.setdefault(update["update_id"], now)
        return updates

    telegram._api_getUpdates = recording  # type: ignore[method-assign]
    return handed_out


async def _warm_up(discord: FakeDiscord, telegram: FakeTelegram) -> None:
    """One /imagine per platform before the burst: first connections and lazy imports are not the burst's."""
    interaction = await discord.slash("imagine", {"prompt": "warm-up"}, user=discord.user("warmup"))
    update = telegram.send(telegram.user(99, "Warm"), "/imagine warm-up")
    message = update["message"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done_discord = _discord_final(discord, interaction) is not None
        done_telegram = any(_replies_to(c) == (99, message["message_id"]) for c in telegram.sent("sendPhoto", 99))
        if done_discord and done_telegram:
            return
        await asyncio.sleep(POLL_S)
    raise RuntimeError("bench bot: the warm-up /imagine were not delivered within 60 s")


async def _emit(
    discord: FakeDiscord, telegram: FakeTelegram, users_per_platform: int, platforms: tuple[str, ...],
    per_user: int = PER_USER,
) -> list[Event]:
    """Every user's requests at once, the two platforms interleaved, one user's requests spread out."""
    discord_users = [discord.user(f"d{i}") for i in range(users_per_platform)]
    telegram_users = [telegram.user(10_000 + i, f"T{i}") for i in range(users_per_platform)]
    events: list[Event] = []
    for round_ in range(per_user):
        for i in range(users_per_platform):
            if "telegram" in platforms:
                update = telegram.message_update(telegram_users[i], f"/imagine a lighthouse, take {round_} by T{i}")
                message = update["message"]
                chat, number = message["chat"]["id"], message["message_id"]
                events.append(
                    Event("telegram", time.monotonic(), (chat, number), f"{chat}:{number}", update["update_id"])
                )
                telegram.push(update)
            if "discord" in platforms:
                emitted = time.monotonic()
                interaction = await discord.slash(
                    "imagine", {"prompt": f"a lighthouse, take {round_} by d{i}"}, user=discord_users[i]
                )
                events.append(Event("discord", emitted, interaction.token, str(interaction.id)))
    return events


async def _wait_for_results(
    discord: FakeDiscord, telegram: FakeTelegram, events: list[Event], deadline: float
) -> Measured:
    while True:
        measured = _measure(discord, telegram, events)
        if len(measured.delivered) >= len(events) or time.monotonic() >= deadline:
            return measured
        await asyncio.sleep(POLL_S)


def _measure(discord: FakeDiscord, telegram: FakeTelegram, events: list[Event]) -> Measured:
    measured = Measured()
    since = min(e.emitted for e in events)
    wanted_tokens = {e.key for e in events if e.platform == "discord"}
    wanted_messages = {e.key for e in events if e.platform == "telegram"}
    for record in discord.requests:
        token = _token(record)
        if token not in wanted_tokens or not record.status:
            continue
        if record.path.endswith("/callback"):
            measured.acks.setdefault(token, record)
        elif record.method == "PATCH" and record.files and record.status == 200:
            measured.delivered.setdefault(token, record.at)
    for call in telegram.calls:
        replied = _replies_to(call)
        if replied not in wanted_messages or not call.finished:
            continue
        if call.ok:  # the "Queued" status message, normally
            measured.reactions.setdefault(replied, call.started)
        if call.ok and call.method == "sendPhoto":
            measured.delivered.setdefault(replied, call.started)
    # Every refusal the fakes answered during the burst (any call, not only those tied to an event).
    # Per chat: its first request's hand-out to the first chat action or message in that chat.
    firsts: dict[int, Event] = {}
    for e in events:
        if e.platform == "telegram":
            firsts.setdefault(e.key[0], e)
    for call in telegram.calls:
        chat = call.chat_id
        if chat in firsts and call.ok and call.method in ("sendChatAction", "sendMessage") and chat is not None:
            measured.chat_reactions.setdefault(chat, call.started)
        if chat in firsts and call.ok and call.method == "sendChatAction" and chat is not None:
            measured.chat_actions.setdefault(chat, []).append(call.started)
    measured.errors = sum(1 for r in discord.requests if r.at >= since and r.status >= 400) + sum(
        1 for c in telegram.calls if c.started >= since and c.finished and not c.ok
    )
    return measured


def _token(record: Recorded) -> str | None:
    # /interactions/{id}/{token}/callback and /webhooks/{application}/{token}/...
    parts = record.path.split("/")
    return parts[3] if len(parts) > 3 and parts[1] in ("interactions", "webhooks") else None


def _replies_to(call: ApiCall) -> tuple[int, int] | None:
    reply = call.params.get("reply_parameters")
    if not isinstance(reply, dict) or call.chat_id is None or "message_id" not in reply:
        return None
    return call.chat_id, int(reply["message_id"])


def _discord_final(discord: FakeDiscord, interaction: FakeInteraction) -> Any:
    message = discord.original(interaction)
    if message is not None and not message.deleted and "🔄" in message.labels():
        return message
    return None


# --- the row ---------------------------------------------------------------------------------------


def _ideal_seconds(events: int) -> float:
    """The floor the provider cap sets: rounds of 64 calls of 2 s each."""
    return math.ceil(events / CONCURRENT["max_provider_calls"]) * LATENCY_S


def _row(
    fifo: bool,
    events: list[Event],
    measured: Measured,
    handed_out: dict[int, float],
    first: float,
    deadline: float,
    sampler: _RssSampler,
    rss_before: int,
    stats: dict[str, Any],
    profile: Path | None,
) -> dict[str, Any]:
    total = len(events)
    users = total // PER_USER
    by_key = {e.key: e for e in events}
    acks = [(r.at - by_key[token].emitted) * 1000 for token, r in measured.acks.items()]
    acks_ok = sum(1 for r in measured.acks.values() if r.status < 400)
    telegram_events = [e for e in events if e.platform == "telegram"]
    status_messages = [
        (measured.reactions[e.key] - handed_out[e.update_id]) * 1000
        for e in telegram_events
        if e.key in measured.reactions and e.update_id in handed_out
    ]
    reactions = [
        (_first_reaction(e, measured, handed_out[e.update_id]) - handed_out[e.update_id]) * 1000
        for e in telegram_events
        if e.key in measured.reactions and e.update_id in handed_out
    ]
    chat_reactions = [
        (measured.chat_reactions[chat] - handed_out[e.update_id]) * 1000
        for chat, e in {e.key[0]: e for e in reversed(telegram_events)}.items()
        if chat in measured.chat_reactions and e.update_id in handed_out
    ]
    reactions_from_queued = [
        (measured.reactions[e.key] - e.emitted) * 1000 for e in telegram_events if e.key in measured.reactions
    ]
    trace = stats.get("trace") or {"discord": {}, "telegram": {}}
    ack_steps: dict[str, list[float]] = {"gateway_to_bot": [], "bot_to_written": [], "written_to_fake": []}
    for e in events:
        marks = trace["discord"].get(e.ident, [])
        if e.platform == "discord" and len(marks) >= 2 and e.key in measured.acks:
            ack_steps["gateway_to_bot"].append((marks[0] - e.emitted) * 1000)
            ack_steps["bot_to_written"].append((marks[1] - marks[0]) * 1000)
            ack_steps["written_to_fake"].append((measured.acks[e.key].at - marks[1]) * 1000)
    reaction_steps: dict[str, list[float]] = {
        "handed_out_to_handler": [], "handler_to_queued": [], "queued_to_fake": []
    }
    for e in telegram_events:
        marks = trace["telegram"].get(e.ident, [])
        if len(marks) >= 2 and e.update_id in handed_out and e.key in measured.reactions:
            reaction_steps["handed_out_to_handler"].append((marks[0] - handed_out[e.update_id]) * 1000)
            reaction_steps["handler_to_queued"].append((marks[1] - marks[0]) * 1000)
            reaction_steps["queued_to_fake"].append((measured.reactions[e.key] - marks[1]) * 1000)
    deliveries = [at - by_key[key].emitted for key, at in measured.delivered.items()]
    last = max(measured.delivered.values(), default=first)
    end = last if not fifo else deadline
    delivered = len(measured.delivered)
    peak_when, peak_rss = sampler.peak_at()
    per_platform = {p: sum(1 for k in measured.delivered if by_key[k].platform == p) for p in ("discord", "telegram")}
    name = (
        f"burst FIFO ({total}, 1 job at a time)" if fifo else f"burst ({total} /imagine, {users} users, 64 in flight)"
    )
    shown = sorted({e.platform for e in events})
    if shown != ["discord", "telegram"]:
        name += f" {'+'.join(shown)} only"
    experiments = stats.get("experiments") or {}
    if experiments:
        name += " WHAT-IF"  # not the bot as it is: see details.experiments
    return {
        "scenario": name,
        "events": total,
        "delivered": delivered,
        "time_to_last_s": None if fifo else last - first,
        "budget_s": deadline - first if fifo else None,
        "projected_last_s": total * LATENCY_S if fifo else None,
        "ack_p50_ms": percentile(acks, 50),
        "ack_p99_ms": percentile(acks, 99),
        "tg_reaction_p50_ms": percentile(reactions, 50),
        "tg_reaction_p99_ms": percentile(reactions, 99),
        "delivery_p50_s": percentile(deliveries, 50),
        "delivery_p99_s": percentile(deliveries, 99),
        "peak_rss_mb": sampler.peak(first, end) / 2**20,
        "bot_cpu_s": stats.get("cpu_s", float("nan")),
        "arrival_loop_lag_p99_ms": _lag(stats.get("loop_lags"), first, first + ARRIVAL_S)[0],
        "details": {
            "rss_measured": "the bot's own process (a subprocess); fakes and Postgres excluded",
            "users": users,
            "provider_latency_s": LATENCY_S,
            "ideal_time_to_last_s": (total * LATENCY_S) if fifo else _ideal_seconds(total),
            "delivered_discord": per_platform["discord"],
            "delivered_telegram": per_platform["telegram"],
            "not_delivered": total - delivered,
            "acks": len(acks),
            "acks_accepted": acks_ok,
            "ack_max_ms": max(acks, default=float("nan")),
            "tg_reactions": len(reactions),
            "tg_status_message_p50_p99_ms": [
                round(percentile(status_messages, 50), 1), round(percentile(status_messages, 99), 1)
            ],
            "tg_reaction_max_ms": max(reactions, default=float("nan")),
            "tg_chat_first_reaction_p50_p99_ms": [
                round(percentile(chat_reactions, 50), 1), round(percentile(chat_reactions, 99), 1)
            ],
            "tg_reaction_from_queued_p50_ms": percentile(reactions_from_queued, 50),
            "tg_reaction_from_queued_p99_ms": percentile(reactions_from_queued, 99),
            "ack_steps_p50_p99_ms": _spread(ack_steps),
            "tg_reaction_steps_p50_p99_ms": _spread(reaction_steps),
            "platform_error_responses": measured.errors,
            "rss_before_burst_mb": rss_before / 2**20,
            "bot_peak_rss_mb_kernel_hwm_whole_life": stats.get("vm_hwm_mb"),
            "bot_wall_s": stats.get("wall_s"),
            "provider": _provider_use(stats.get("provider_spans"), first, last),
            "bot_loop_lag_arrival_p99_max_ms": _lag(stats.get("loop_lags"), first, first + ARRIVAL_S),
            "bot_loop_lag_whole_p99_max_ms": _lag(stats.get("loop_lags"), first, end),
            "fakes_loop_lag_arrival_p99_max_ms": _lag(stats.get("fakes_lags"), first, first + ARRIVAL_S),
            "fakes_loop_lag_whole_p99_max_ms": _lag(stats.get("fakes_lags"), first, end),
            "bot_gc_pauses": _gc(stats.get("gc_pauses"), first),
            "fakes_cpu_s": stats.get("fakes_cpu_s"),
            "postgres_cpu_s": stats.get("postgres_cpu_s"),
            "rss_peak_whole_run_mb_at_s": [peak_rss / 2**20, peak_when - first],
            "emit_spread_ms": (max(e.emitted for e in events) - first) * 1000,
            "profile": str(profile) if profile else None,
            "profile_breakdown_s": stats.get("profile_breakdown_s"),
            "settings": {**COMMON, **(FIFO if fifo else CONCURRENT)},
            "experiments": experiments,
        },
    }


def _first_reaction(event: Event, measured: Measured, handed_out: float) -> float:
    """The status message replying to the event, or an earlier chat action in its chat after the hand-out."""
    actions = measured.chat_actions.get(event.key[0], [])
    after = next((at for at in actions if at >= handed_out), None)
    status = measured.reactions[event.key]
    return status if after is None else min(status, after)


def _spread(steps: dict[str, list[float]]) -> dict[str, list[float]]:
    return {name: [round(percentile(v, 50), 1), round(percentile(v, 99), 1)] for name, v in steps.items()}


def _lag(lags: list[tuple[float, float]] | None, since: float, until: float) -> list[float]:
    """p99 and max of an event loop's lag (ms) between two instants."""
    window = [lag for at, lag in lags or () if since <= at <= until]
    return [round(percentile(window, 99), 1), round(max(window, default=float("nan")), 1)]


def _gc(pauses: dict[str, Any] | None, first: float) -> dict[str, Any]:
    """The bot's garbage-collector pauses; long ones as seconds after the first event."""
    return {
        generation: {**info, "over_20ms_at": [round(at - first, 2) for at in info["over_20ms_at"]]}
        for generation, info in (pauses or {}).items()
    }


def _provider_use(spans: list[tuple[float, float]] | None, first: float, last: float) -> dict[str, Any]:
    """When the provider worked: its first call, how many calls ran at once (at most, on average)."""
    spans = [(a, b) for a, b in spans or () if a >= first]
    if not spans:
        return {"calls": 0}
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    end = max(b for _, b in spans)
    return {
        "calls": len(spans),
        "first_call_s": round(min(a for a, _ in spans) - first, 3),
        "last_call_end_s": round(end - first, 3),
        "in_flight_max": peak,
        "in_flight_avg_until_last_result": round(sum(b - a for a, b in spans) / max(1e-9, last - first), 1),
    }

