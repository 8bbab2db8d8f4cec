"""Scenario fleet: a burst against a deployment of several `python -m bot run` processes sharing one
Postgres and one store, one of them SIGKILLed mid-burst; whether anything is lost or shown twice.

The deployment, each a real process as an operator starts it (`run --only ROLE`, discord.py pointed at the
fake by tests.fakes.discord_process): one Telegram front end in webhook mode, two Discord front ends with
one shard each (DISCORD_SHARD_COUNT=2), two workers. The provider is the shipped offline model made as slow
as a real one (OFFLINE_DELAY_SECONDS). Every other setting is the default (the burst is shaped to fit the
per-user defaults); the fakes and the bench run in this process.

The burst: each Discord user sends PER_USER /imagine in a server of one shard or the other, each Telegram
user PER_USER messages POSTed to the webhook as Telegram does (its secret token header, at most
TELEGRAM_MAX_CONNECTIONS requests at once, resent until answered 200). Mid-burst one process is SIGKILLed:

- worker: the canonical case. Once every request is accepted (a row in image.generations) and an eighth of
  the images were shown, so that the worker's jobs are running, made, or being shown. They stay under its
  leases until those run out (JOB_LEASE_SECONDS); then the other worker takes them over.
- shard: the Discord process of shard 1, once half of its interactions were acknowledged, started again at
  once (Discord requires each shard served); once it is back, a second wave of /imagine in that shard's
  server shows it serves again.
- webhook: the Telegram process, once half of the webhook requests were answered 200, started again at once;
  what was not answered 200 is resent.

Measured on the fakes' side of the wire (one clock, time.monotonic). A request's final image is shown by
the Discord edit of its deferred message, or a followup, carrying a file (editing the same message again
shows no second message), or by the Telegram photo replying to its message; a second message is a
duplicate. A request is resolved when its image is shown, or (Discord) its deferral was answered "not
taken" after a restart, or Discord never had its acknowledgement (the user sees "did not respond"); one
acknowledged and never resolved is lost. The run waits until every request is resolved, no generation is
left unfinished or undelivered and the inbox has nothing unhandled (a dead front end's claims run out
first), or until two leases or two inbox claims and a minute after the kill. Then, per user: the balance is the sum of
the ledger, and what was charged is the images shown (a request's once) times the model's cost. The
takeover: from the kill until the jobs the killed worker held were shown (again)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.burst import _replies_to, _token
from bench.core_scenarios import percentile
from bot.adapters.discord.intake import NOT_TAKEN
from bot.adapters.telegram.delivery import PHOTO as TELEGRAM_PHOTO_PART
from bot.adapters.telegram.webhook import SECRET_HEADER
from bot.config import Settings
from bot.core.catalogue import DEFAULT_MODELS, OFFLINE_MODEL
from tests.fakes.discord_server import ACK_WINDOW_SECONDS, FakeDiscord
from tests.fakes.telegram_server import FakeTelegram, fake_telegram_server

REPO = Path(__file__).resolve().parent.parent
OFFLINE_DELAY_S = 2.0
PER_USER = 2  # within the defaults: PER_USER_JOBS_IN_FLIGHT=2, REQUESTS_PER_MINUTE=10, STARTING_CREDITS=20
DISCORD_USERS_PER_SHARD = 50
TELEGRAM_USERS = 50
SECOND_WAVE = 10  # shard variant: /imagine in the restarted shard's server once it is back
TELEGRAM_MAX_CONNECTIONS = 40  # what Telegram opens to a webhook at most, by default
WEBHOOK_PATH = "/telegram/hook"
WEBHOOK_SECRET = "bench-fleet-secret"
STARTUP_TIMEOUT_S = 120.0
SETTLE_S = 3.0  # after the last image: long enough for a late duplicate to show
POLL_S = 0.05
KILLS = ("worker", "shard", "webhook")
# What the deployment sets beyond the defaults (tokens and URLs aside): listed in bench/README.md.
NON_DEFAULTS = {"OFFLINE_DELAY_SECONDS": str(OFFLINE_DELAY_S)}
STARTED = re.compile(r"job (\S+) started")


@dataclass
class Request:
    platform: str
    user: str  # the platform user id, as image.users has it
    prompt: str
    where: Any  # Discord: the server's id; Telegram: the user, as the fake has it
    wave: int = 1
    key: Any = None  # once sent. Discord: the interaction token; Telegram: (chat id, message id)
    event_id: str = ""  # once sent: the inbox's name for it (Discord: the interaction id; Telegram: the update id)
    emitted: float = 0.0


@dataclass
class Member:
    """One process of the deployment; its output goes to a log file (appended to across restarts)."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    since: int = 0  # where this start's output begins in the log

    def start(self) -> None:
        self.since = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.discord_process", "run", *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
            )

    def text(self, whole: bool = False) -> str:
        data = self.log.read_bytes()
        return data.decode(errors="replace") if whole else data[self.since :].decode(errors="replace")

    async def running(self, within: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + within
        while "running:" not in self.text():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fleet: {self.name} did not start\n{self.text()[-3000:]}")
            await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await asyncio.to_thread(self.process.wait, 30)

    async def stop(self) -> int | None:
        """SIGTERM, as a process manager stops it; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)
        return self.process.returncode


@dataclass
class Killed:
    at: float
    owner: str | None = None  # the killed worker's lease owner
    held: dict[str, str] = field(default_factory=dict)  # generation id -> prompt, undelivered at the kill
    back_at: float | None = None  # a restarted front end serving again


async def fleet(data_dir: Path, dsn: str, kill: str = "worker", quick: bool = False) -> dict[str, Any]:
    """One run; returns its table row."""
    if kill not in KILLS:
        raise ValueError(f"fleet: kill one of {KILLS}, not {kill!r}")
    scale = 0.4 if quick else 1.0
    shard_users = max(2, round(DISCORD_USERS_PER_SHARD * scale))
    telegram_users = max(2, round(TELEGRAM_USERS * scale))
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    discord = FakeDiscord()
    await discord.start()
    guilds = [discord.add_guild(shard, 2) for shard in (0, 1)]
    members: list[Member] = []
    pool: asyncpg.Pool | None = None
    try:
        async with fake_telegram_server() as telegram:
            port = _free_port()
            members = _deployment(data_dir, dsn, discord, telegram, port)
            by_name = {m.name: m for m in members}
            started = time.monotonic()
            for member in members:
                member.start()
            await asyncio.gather(*(m.running() for m in members))
            await _shards_connected(discord, 2)
            startup_s = time.monotonic() - started
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            async with aiohttp.ClientSession() as http:
                webhook = Webhook(http, port)
                await _warm_up(discord, telegram, webhook, guilds)
                requests = _requests(discord, telegram, guilds, shard_users, telegram_users)
                cost = next(m.cost for m in DEFAULT_MODELS if m.name == OFFLINE_MODEL)
                burst = asyncio.create_task(_emit(discord, telegram, webhook, requests))
                if kill == "webhook":
                    webhook.milestone = webhook.answered + sum(1 for r in requests if r.platform == "telegram") // 2
                    await webhook.reached.wait()
                    killed = await _restart(by_name["telegram"], discord)
                    await burst
                elif kill == "shard":
                    in_shard = [r for r in requests if r.where == guilds[1]]
                    await _acknowledged(discord, telegram, in_shard, len(in_shard) // 2)
                    killed = await _restart(by_name["discord-shard-1"], discord)
                    await burst
                    wave = _requests(discord, telegram, [guilds[1]], SECOND_WAVE, 0, per_user=1, wave=2)
                    await _emit(discord, telegram, webhook, wave)
                    requests += wave
                else:
                    await burst
                    await _accepted(pool, requests)
                    await _shown(discord, telegram, requests, len(requests) // 8)
                    killed = await _kill_worker(pool, by_name["worker-1"])
                first = min(r.emitted for r in requests)
                defaults = Settings.model_fields
                patience = 2 * max(defaults["job_lease_seconds"].default, defaults["inbox_claim_seconds"].default)
                resolved_at = await _all_resolved(pool, discord, telegram, requests, killed.at + patience + 60)
                await asyncio.sleep(SETTLE_S)
                found = _seen(discord, telegram, requests)
                database = await _database_checks(pool, requests, found, cost)
                database["photo_to_receipt_ms"] = await _photo_to_receipt(pool, telegram, requests)
        codes = {m.name: await m.stop() for m in members}
    finally:
        for member in members:
            if member.process is not None and member.process.poll() is None:
                member.process.kill()
        if pool is not None:
            await pool.close()
        await discord.stop()
    logs = {m.name: m.text(whole=True) for m in members}
    return _row(kill, requests, found, database, killed, first, resolved_at, startup_s, codes, logs, cost)


# --- the deployment -----------------------------------------------------------------------------------


def _deployment(data_dir: Path, dsn: str, discord: FakeDiscord, telegram: FakeTelegram, port: int) -> list[Member]:
    """The processes and their environments: what every process shares (one database, one store, the
    tokens) and each one's own."""
    settings = {name.upper() for name in Settings.model_fields}
    # The bench's own environment is not the deployment's: only the defaults, and what is set here.
    base = {k: v for k, v in os.environ.items() if k not in settings and not k.endswith(("_TOKEN", "_API_KEY"))}
    shared = {
        **base,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": dsn,
        "DATA_DIR": str(data_dir / "data"),
        "DISCORD_TOKEN": discord.token,
        "FAKE_DISCORD_API": discord.api_url,
        "FAKE_DISCORD_GATEWAY": discord.gateway_url,
        "TELEGRAM_TOKEN": telegram.token,
        "TELEGRAM_BASE_URL": telegram.base_url,
        "TELEGRAM_BASE_FILE_URL": telegram.base_file_url,
        **NON_DEFAULTS,
    }
    webhook = {
        "TELEGRAM_WEBHOOK_URL": f"https://bot.example.test{WEBHOOK_PATH}",
        "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TELEGRAM_WEBHOOK_LISTEN": "127.0.0.1",
        "TELEGRAM_WEBHOOK_PORT": str(port),
    }
    roles = [
        ("telegram", ["--only", "telegram"], webhook),
        *(
            (f"discord-shard-{i}", ["--only", "discord"], {"DISCORD_SHARD_COUNT": "2", "DISCORD_SHARD_IDS": str(i)})
            for i in (0, 1)
        ),
        *((f"worker-{i}", ["--only", "worker"], {}) for i in (0, 1)),
    ]
    (data_dir / "data").mkdir(exist_ok=True)
    members = []
    for name, args, own in roles:
        cwd = data_dir / name  # no .env there: the environment is the whole configuration
        cwd.mkdir(exist_ok=True)
        members.append(Member(name, args, {**shared, **own}, data_dir / f"{name}.log", cwd))
    return members


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _shards_connected(discord: FakeDiscord, shards: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while len(discord._sockets) < shards:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: {len(discord._sockets)} of {shards} Discord shards connected")
        await asyncio.sleep(0.1)


# --- the platforms' side ------------------------------------------------------------------------------


class Webhook:
    """Telegram's side of a webhook: POST each update with the secret token; resend it (after a pause)
    until it is answered 200, as Telegram does; at most TELEGRAM_MAX_CONNECTIONS requests at once."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        self.gate = asyncio.Semaphore(TELEGRAM_MAX_CONNECTIONS)
        self.answered = 0  # updates answered 200
        self.resent = 0
        self.milestone = 0  # `reached` is set once this many were answered
        self.reached = asyncio.Event()

    async def post(self, update: dict[str, Any]) -> None:
        while True:
            async with self.gate:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.http.post(
                        self.url, json=update, headers={SECRET_HEADER: WEBHOOK_SECRET},
                        timeout=aiohttp.ClientTimeout(total=60),
                    ) as response:
                        if response.status == 200:
                            self.answered += 1
                            if self.milestone and self.answered >= self.milestone:
                                self.reached.set()
                            return
            self.resent += 1
            await asyncio.sleep(1.0)


def _requests(
    discord: FakeDiscord, telegram: FakeTelegram, guilds: list[int], discord_users: int, telegram_users: int,
    per_user: int = PER_USER, wave: int = 1,
) -> list[Request]:
    """Who asks what, in the order the burst sends it (platforms and servers interleaved)."""
    requests: list[Request] = []
    d_users = [
        (guild, discord.user(f"w{wave}g{g}u{i}")) for g, guild in enumerate(guilds) for i in range(discord_users)
    ]
    t_users = [telegram.user(20_000 + wave * 1000 + i, f"T{i}") for i in range(telegram_users)]
    for take in range(per_user):
        for i in range(max(len(d_users), len(t_users))):
            if i < len(d_users):
                guild, user = d_users[i]
                prompt = f"a lighthouse, take {take} by {user['username']}"
                requests.append(Request("discord", user["id"], prompt, guild, wave))
            if i < len(t_users):
                user = t_users[i]
                prompt = f"a lighthouse, take {take} by t{user['id']}"
                requests.append(Request("telegram", str(user["id"]), prompt, user, wave))
    return requests


async def _emit(discord: FakeDiscord, telegram: FakeTelegram, webhook: Webhook, requests: list[Request]) -> None:
    """Every request at once: Discord events on the gateway one after another (as one connection carries
    them), Telegram's POSTs concurrently."""
    posts = []
    for request in requests:
        request.emitted = time.monotonic()
        if request.platform == "discord":
            user = discord.users[int(request.user)]
            interaction = await discord.slash(
                "imagine", {"prompt": request.prompt}, user=user, guild_id=request.where
            )
            request.key, request.event_id = interaction.token, str(interaction.id)
        else:
            update = telegram.message_update(request.where, f"/imagine {request.prompt}")
            message = update["message"]
            request.key, request.event_id = (message["chat"]["id"], message["message_id"]), str(update["update_id"])
            posts.append(asyncio.create_task(webhook.post(update)))
    await asyncio.gather(*posts)


async def _warm_up(discord: FakeDiscord, telegram: FakeTelegram, webhook: Webhook, guilds: list[int]) -> None:
    """One /imagine per server and one on Telegram before the burst (first connections, lazy imports)."""
    warm = _requests(discord, telegram, guilds, 1, 1, per_user=1, wave=0)
    await _emit(discord, telegram, webhook, warm)
    deadline = time.monotonic() + 60
    while any(not seen.messages for seen in _seen(discord, telegram, warm).values()):
        if time.monotonic() > deadline:
            raise RuntimeError("fleet: the warm-up /imagine were not delivered within 60 s")
        await asyncio.sleep(0.1)


# --- the kills ------------------------------------------------------------------------------------------


async def _accepted(pool: asyncpg.Pool, requests: list[Request], within: float = 120) -> None:
    prompts = [r.prompt for r in requests]
    deadline = time.monotonic() + within
    while await pool.fetchval("SELECT count(*) FROM image.generations WHERE prompt = ANY($1)", prompts) < len(prompts):
        if time.monotonic() > deadline:
            raise RuntimeError("fleet: the burst was not accepted")
        await asyncio.sleep(POLL_S)


async def _shown(
    discord: FakeDiscord, telegram: FakeTelegram, requests: list[Request], count: int, within: float = 60
) -> None:
    """Until `count` final images reached the platforms."""
    deadline = time.monotonic() + within
    while True:
        if sum(1 for seen in _seen(discord, telegram, requests).values() if seen.messages) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: fewer than {count} images were shown")
        await asyncio.sleep(0.01)


async def _acknowledged(
    discord: FakeDiscord, telegram: FakeTelegram, requests: list[Request], count: int, within: float = 60
) -> None:
    """Until `count` of these Discord interactions were acknowledged."""
    deadline = time.monotonic() + within
    while True:
        sent = [r for r in requests if r.key is not None]
        if sum(1 for seen in _seen(discord, telegram, sent).values() if seen.acknowledged) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet: fewer than {count} interactions were acknowledged")
        await asyncio.sleep(0.005)


async def _kill_worker(pool: asyncpg.Pool, victim: Member) -> Killed:
    """SIGKILL the worker, and note the jobs it held (running, or made and not yet marked delivered)."""
    at = time.monotonic()
    await victim.kill()
    held = await pool.fetch(
        "SELECT id, prompt, lease_owner FROM image.generations WHERE lease_owner IS NOT NULL AND delivered_at IS NULL"
    )
    its = set(STARTED.findall(victim.text()))
    owners = {row["lease_owner"] for row in held if row["id"] in its}
    owner = owners.pop() if len(owners) == 1 else None
    return Killed(at, owner, {row["id"]: row["prompt"] for row in held if row["lease_owner"] == owner})


async def _restart(victim: Member, discord: FakeDiscord) -> Killed:
    """SIGKILL a front end and start it again at once, as a process manager would."""
    at = time.monotonic()
    await victim.kill()
    victim.start()
    await victim.running()
    await _shards_connected(discord, 2)
    return Killed(at, back_at=time.monotonic())


# --- what happened ------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What the platforms received for one request."""

    # Each message showing its final image -> when it was written with it. Discord: the deferred message
    # edited (editing it again shows the same message, not another) or a followup posted; Telegram: a photo
    # sent. More than one message is a duplicate.
    messages: dict[Any, list[float]] = field(default_factory=dict)
    # Discord: the deferral was accepted (in time). Telegram: the webhook's 200 (Webhook resends until then).
    acknowledged: bool = False
    not_taken: bool = False  # Discord: the deferral answered "not taken" after a restart (nothing charged)

    @property
    def shown(self) -> float | None:
        """When its final image was first shown."""
        return min((times[0] for times in self.messages.values()), default=None)


def _seen(discord: FakeDiscord, telegram: FakeTelegram, requests: list[Request]) -> dict[Any, Seen]:
    seen = {r.key: Seen(acknowledged=r.platform == "telegram") for r in requests}
    for index, record in enumerate(discord.requests):
        token = _token(record)
        if token not in seen or not 200 <= record.status < 300:
            continue
        if record.callback_type is not None:
            seen[token].acknowledged = True
        elif record.files and record.method == "PATCH":  # /webhooks/{application}/{token}/messages/{message}
            seen[token].messages.setdefault(record.path.rsplit("/", 1)[-1], []).append(record.at)
        elif record.files and record.method == "POST":
            seen[token].messages[index] = [record.at]
        elif record.method == "PATCH" and isinstance(record.json, dict) and record.json.get("content") == NOT_TAKEN:
            seen[token].not_taken = True
    for index, call in enumerate(telegram.calls):
        replied = _replies_to(call)
        if replied in seen and call.ok and call.method in ("sendPhoto", "sendDocument", "sendMediaGroup"):
            seen[replied].messages[index] = [call.finished or call.started]
    return seen


def _resolved(request: Request, seen: Seen, now: float) -> bool:
    """An image shown, or the request visibly not taken, or Discord gave up on its acknowledgement."""
    never_acknowledged = not seen.acknowledged and now - request.emitted > ACK_WINDOW_SECONDS
    return bool(seen.messages) or seen.not_taken or never_acknowledged


async def _all_resolved(
    pool: asyncpg.Pool, discord: FakeDiscord, telegram: FakeTelegram, requests: list[Request], deadline: float
) -> float | None:
    """Until every request is resolved, the database has no job left to deliver and the inbox nothing left
    to handle (a dead front end's claims run out first); when that was, or None at the deadline."""
    prompts = [r.prompt for r in requests]
    while time.monotonic() < deadline:
        now = time.monotonic()
        seen = _seen(discord, telegram, requests)
        if all(_resolved(r, seen[r.key], now) for r in requests):
            pending = await pool.fetchval(
                """SELECT (SELECT count(*) FROM image.generations WHERE prompt = ANY($1) AND delivered_at IS NULL)
                        + (SELECT count(*) FROM image.inbox WHERE handled_at IS NULL)""",
                prompts,
            )
            if pending == 0:
                return now
        await asyncio.sleep(0.2)
    return None


async def _database_checks(
    pool: asyncpg.Pool, requests: list[Request], found: dict[Any, Seen], cost: int
) -> dict[str, Any]:
    prompts = [r.prompt for r in requests]
    statuses = await pool.fetch(
        """SELECT status, delivered_at IS NOT NULL AS delivered, count(*) AS n FROM image.generations
           WHERE prompt = ANY($1) GROUP BY 1, 2""",
        prompts,
    )
    rows = await pool.fetchval("SELECT count(*) FROM image.generations WHERE prompt = ANY($1)", prompts)
    accounts = await pool.fetch(
        """SELECT u.platform, u.platform_user_id, a.balance,
                  (SELECT coalesce(sum(l.delta), 0) FROM image.credit_ledger l WHERE l.account_id = a.id) AS ledger,
                  (SELECT -coalesce(sum(l.delta), 0) FROM image.credit_ledger l
                   WHERE l.account_id = a.id AND l.reason IN ('reserve', 'refund')) AS charged
           FROM image.users u JOIN image.accounts a ON a.id = u.account_id"""
    )
    images_per_user: dict[tuple[str, str], int] = {}
    for request in requests:
        who = (request.platform, request.user)
        # Every request is for one image (a duplicate shows it again; it is counted as such, not here).
        images_per_user[who] = images_per_user.get(who, 0) + (1 if found[request.key].messages else 0)
    asked = {(r.platform, r.user) for r in requests}
    balance_off = [dict(a) for a in accounts if a["balance"] != a["ledger"]]
    inbox = {
        (row["platform"], row["event_id"]): row["handled"]
        for row in await pool.fetch("SELECT platform, event_id, handled_at IS NOT NULL AS handled FROM image.inbox")
    }
    lost = [r for r in requests if not (found[r.key].messages or found[r.key].not_taken) and found[r.key].acknowledged]
    charged_off = [
        {**dict(a), "images": images_per_user.get((a["platform"], a["platform_user_id"]), 0)}
        for a in accounts
        if (a["platform"], a["platform_user_id"]) in asked
        and a["charged"] != cost * images_per_user.get((a["platform"], a["platform_user_id"]), 0)
    ]
    return {
        "generations": rows,
        "statuses": {f"{r['status']}{'' if r['delivered'] else ' undelivered'}": r["n"] for r in statuses},
        "unfinished": sum(r["n"] for r in statuses if r["status"] in ("queued", "running") or not r["delivered"]),
        "users": len(asked),
        "inbox_unhandled": sum(1 for handled in inbox.values() if not handled),
        # The lost requests (acknowledged, neither shown nor answered "not taken"): in the inbox, or not at all.
        "lost_in_inbox": {
            state: sum(1 for r in lost if inbox.get((r.platform, r.event_id), "absent") == value)
            for state, value in (("handled", True), ("unhandled", False), ("absent", "absent"))
        },
        "balance_not_ledger": balance_off,
        "charged_not_images": charged_off,
    }


async def _photo_to_receipt(pool: asyncpg.Pool, telegram: FakeTelegram, requests: list[Request]) -> list[float]:
    """Telegram: from the fake answering a photo until the worker had recorded it as sent (p50, p99, max,
    ms). A worker killed meanwhile leaves a job whose photo is in the chat but not in the database: whoever
    takes the job over sends it again (the Bot API has no idempotency key)."""
    offset = time.time() - time.monotonic()  # the database's now() is this machine's wall clock
    rows = await pool.fetch(
        """SELECT g.chat_id, p.message_id, extract(epoch FROM p.created_at)::float8 AS at
           FROM image.delivery_parts p JOIN image.generations g ON g.id = p.generation_id WHERE p.part = $1""",
        TELEGRAM_PHOTO_PART,
    )
    recorded = {(row["chat_id"], row["message_id"]): row["at"] for row in rows}
    ours = {r.key for r in requests if r.platform == "telegram"}
    delays = []
    for call in telegram.calls:
        if call.method == "sendPhoto" and call.ok and _replies_to(call) in ours:
            at = recorded.get((str(call.chat_id), str(call.result["message_id"])))
            if at is not None:
                delays.append((at - (call.finished + offset)) * 1000)
    return [round(percentile(delays, 50), 1), round(percentile(delays, 99), 1), round(max(delays, default=0.0), 1)]


def _row(
    kill: str, requests: list[Request], found: dict[Any, Seen], database: dict[str, Any], killed: Killed,
    first: float, resolved_at: float | None, startup_s: float, codes: dict[str, int | None], logs: dict[str, str],
    cost: int,
) -> dict[str, Any]:
    total = len(requests)
    seen = [found[r.key] for r in requests]
    delivered = sum(1 for v in seen if v.messages)
    duplicates = sum(len(v.messages) - 1 for v in seen if v.messages)
    not_taken = [r for r, v in zip(requests, seen, strict=True) if not v.messages and v.not_taken]
    not_acknowledged = [r for r, v in zip(requests, seen, strict=True) if not v.messages and not v.acknowledged]
    lost = [r for r, v in zip(requests, seen, strict=True) if not v.messages and v.acknowledged and not v.not_taken]
    shown = {r.key: v.shown for r, v in zip(requests, seen, strict=True) if v.shown is not None}
    times = [shown[r.key] - r.emitted for r in requests if r.key in shown]
    last = max(shown.values(), default=first)
    by_prompt = {r.prompt: r for r in requests}
    held = [by_prompt[p] for p in killed.held.values() if p in by_prompt]
    shown_before = [r for r in held if shown.get(r.key, killed.at) < killed.at]
    held_keys = {r.key for r in held}
    rewritten = {
        name: sum(len(times) - 1 for r in requests if (r.key in held_keys) == of_held
                  for times in found[r.key].messages.values())
        for name, of_held in (("held_by_the_killed_worker", True), ("others", False))
    }
    # The takeover: the last time each held job's image was written, if after the kill (a job the killed
    # worker had shown is written again, on Discord onto the same message).
    taken_over = [
        latest - killed.at for r in held
        if (latest := max((t for ts in found[r.key].messages.values() for t in ts), default=0.0)) >= killed.at
    ]
    nothing_lost = (
        not lost and not duplicates and database["unfinished"] == 0 and resolved_at is not None
        and not database["balance_not_ledger"] and not database["charged_not_images"]
    )
    per_platform_duplicates = {
        p: sum(len(v.messages) - 1 for r, v in zip(requests, seen, strict=True) if r.platform == p and v.messages)
        for p in ("discord", "telegram")
    }
    troubled = {name: text.count("Traceback") + text.count(" ERROR ") for name, text in logs.items()}
    return {
        "scenario": f"fleet ({total} /imagine, 5 processes, {kill} SIGKILLed)",
        "requests": total,
        "delivered": delivered,
        "duplicates": duplicates,
        "told_not_taken": len(not_taken),
        "not_acknowledged": len(not_acknowledged),
        "lost": len(lost),
        "nothing_lost": nothing_lost,
        "time_to_last_s": last - first,
        "killed_jobs": len(held) if kill == "worker" else None,
        "takeover_first_s": min(taken_over, default=None),
        "takeover_last_s": max(taken_over, default=None),
        "details": {
            "killed": kill,
            "killed_after_s": round(killed.at - first, 2),
            "restarted_serving_after_kill_s": round(killed.back_at - killed.at, 2) if killed.back_at else None,
            "all_resolved_after_kill_s": round(resolved_at - killed.at, 2) if resolved_at else None,
            "killed_worker_held_shown_before_kill": len(shown_before),
            "time_to_image_p50_p99_s": [round(percentile(times, 50), 2), round(percentile(times, 99), 2)],
            "shown_after_over_30s": {
                p: sum(1 for r in requests if r.platform == p and r.key in shown and shown[r.key] - r.emitted > 30)
                for p in ("discord", "telegram")
            },
            "per_platform_delivered": {
                p: sum(1 for r in requests if r.platform == p and r.key in shown) for p in ("discord", "telegram")
            },
            "per_platform_duplicates": per_platform_duplicates,
            "images_written_again_onto_the_same_message": rewritten,
            "lost": [r.prompt for r in lost][:20],
            "second_wave_delivered": sum(1 for r in requests if r.wave == 2 and r.key in shown),
            "database": database,
            "model_cost": cost,
            "startup_s": round(startup_s, 2),
            "exit_codes_after_sigterm": codes,
            "log_errors_and_tracebacks": troubled,
            "settings_beyond_defaults": NON_DEFAULTS,
            "job_lease_seconds": Settings.model_fields["job_lease_seconds"].default,
            "inbox_claim_seconds": Settings.model_fields["inbox_claim_seconds"].default,
        },
    }
