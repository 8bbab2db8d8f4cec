"""A stand-in for Discord on 127.0.0.1: its REST API and its gateway, enough of both to drive the real
discord.py. Only the network is replaced: tests point discord.py's URLs here (see `point_discord_py_at`).

- Gateway (websocket at /gateway): HELLO (op 10), IDENTIFY (op 2) → READY, heartbeats (op 1) → ACK (op 11).
  IDENTIFY's `shard` [id, count] is honoured as Discord does: a guild belongs to shard
  `(guild_id >> 22) % count`, its events go only to that shard's connection, DMs to shard 0.
  Tests push events with `dispatch`, and build realistic INTERACTION_CREATE payloads with `slash`,
  `press` and `autocomplete`.
- REST under /api/v10: every request is recorded (method, path, JSON body or multipart `payload_json`,
  uploaded files, response status).
- Discord's rules that matter to a bot are enforced with Discord's own error bodies: one acknowledgement
  per interaction within 3 s (40060 / 10062); the token works for 15 minutes (401, 50027); the first
  followup after a "thinking" defer replaces it and keeps its visibility; uploads over the interaction's
  `attachment_size_limit` → 413 (40005); content over 2000 characters, more than 5 rows of 5 buttons,
  custom_ids over 100 characters or repeated → 400 (50035).
- Scripted trouble: users whose DMs are closed (403, 50007), channels the bot may not post in
  (403, 50013), and one-off failures such as a 429 with `retry_after` (`fail_next`, `rate_limit_next`).
- Requests in flight (`hold`): a request is carried out, as Discord would on receiving it, but its answer
  waits until the test releases it (for killing the bot while it waits); or, with `carried_out=False`,
  the request itself waits, on its way to Discord.

The fake's clock can be moved forward (`advance`) to age interaction tokens without waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import yarl
from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
ACK_WINDOW_SECONDS = 3.0
TOKEN_LIFETIME_SECONDS = 15 * 60

# Permission bits (https://discord.com/developers/docs/topics/permissions).
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
GUILD_BOT_PERMISSIONS = (
    VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY | USE_EXTERNAL_EMOJIS
)
# What Discord reports as app_permissions in a DM with the bot.
DM_BOT_PERMISSIONS = ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE | USE_EXTERNAL_EMOJIS

EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Interaction and callback types.
APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 2, 3, 4, 5
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE_RESULT = 4, 5, 6, 7, 8
MODAL = 9
ATTACHMENT_OPTION = 11
MESSAGE_COMMAND = 3  # an application command's type: a message context-menu command


def point_discord_py_at(fake: FakeDiscord, monkeypatch: Any) -> None:
    """The only patch: discord.py's REST base URL and gateway URL (both plain class constants)."""
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_url)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))


@dataclass(frozen=True)
class Upload:
    field: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Recorded:
    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    files: list[Upload]
    at: float  # time.monotonic()
    status: int = 0

    @property
    def callback_type(self) -> int | None:
        return self.json.get("type") if self.path.endswith("/callback") and isinstance(self.json, dict) else None

    @property
    def upload_bytes(self) -> int:
        return sum(len(f.data) for f in self.files)


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    author: dict[str, Any]
    created: float
    type: int = 0
    content: str = ""
    flags: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # attachment id -> bytes
    webhook_id: int | None = None
    interaction_token: str | None = None  # the interaction that made it, if any
    edited: float | None = None
    deleted: bool = False
    edits: int = 0

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 2]

    def labels(self) -> list[str]:
        """Each button as shown: its emoji and/or label."""
        shown = []
        for button in self.buttons():
            emoji = (button.get("emoji") or {}).get("name") or ""
            shown.append(f"{emoji}{button.get('label') or ''}")
        return shown

    def button(self, shown: str) -> dict[str, Any]:
        for button, text in zip(self.buttons(), self.labels(), strict=True):
            if text == shown:
                return button
        raise KeyError(f"no button {shown!r} on message {self.id}: {self.labels()}")

    def custom_id(self, shown: str) -> str:
        return str(self.button(shown)["custom_id"])

    def attachment_data(self) -> list[bytes]:
        return [self.files[a["id"]] for a in self.attachments]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "content": self.content,
            "timestamp": _iso(self.created),
            "edited_timestamp": _iso(self.edited) if self.edited else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": self.attachments,
            "embeds": self.embeds,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
            "components": self.components,
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        return data


@dataclass
class FakeInteraction:
    id: int
    token: str
    type: int
    payload: dict[str, Any]
    channel_id: int
    user_id: int
    created: float  # fake clock
    upload_limit: int
    response_type: int | None = None
    original_id: int | None = None
    ephemeral: bool = False
    message_ids: set[int] = field(default_factory=set)
    choices: list[dict[str, Any]] | None = None  # an autocomplete answer
    modal: dict[str, Any] | None = None  # the modal opened as the response (callback type 9)


@dataclass
class _Scripted:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int
    uploads_only: bool
    where: Callable[[Any], bool] | None = None


@dataclass
class Hold:
    """Requests whose answers wait (see FakeDiscord.hold); `arrived` lists them as they are carried out."""

    method: str
    pattern: re.Pattern[str]
    uploads_only: bool
    carried_out: bool
    arrived: list[Recorded] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, record: Recorded) -> bool:
        return (
            not self.released.is_set() and record.method == self.method and bool(self.pattern.fullmatch(record.path))
            and (record.files != [] or not self.uploads_only)
        )

    def release(self) -> None:
        self.released.set()


class FakeDiscord:
    def __init__(self, token: str = "test-token", heartbeat_interval_ms: int = 500) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.clock_offset = 0.0
        self._counter = itertools.count(1)
        self.application_id = self.snowflake()
        self.bot_user: dict[str, Any] = {
            "id": str(self.application_id),
            "username": "imagebot",
            "discriminator": "0",
            "global_name": "Image Bot",
            "avatar": None,
            "bot": True,
            "public_flags": 0,
            "flags": 0,
        }
        self.guild_id = self.snowflake()
        self.guild_ids = [self.guild_id]  # the servers the bot is in (`add_guild` adds more)
        self.channel_id = self.snowflake()
        self.requests: list[Recorded] = []
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self.users: dict[int, dict[str, Any]] = {}
        self.dm_channels: dict[int, int] = {}  # user id -> DM channel id
        self.closed_dms: set[int] = set()
        self.channel_errors: dict[int, tuple[int, int, str]] = {}
        self.attachment_files: dict[str, bytes] = {}  # "<id>/<filename>" -> bytes, served under /attachments
        self.downloads: list[str] = []
        self.entitlements: dict[str, dict[str, Any]] = {}  # by id: the application's, as Discord keeps them
        self.consumed: list[str] = []  # entitlement ids, once per consume call
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or a guild id -> synced commands
        self.identifies: list[dict[str, Any]] = []
        self.heartbeats = 0
        self._scripted: list[_Scripted] = []
        self._holds: list[Hold] = []
        self._sockets: dict[int, web.WebSocketResponse] = {}  # by shard id
        self.shard_count = 1  # as the connections identified
        self._sequence = 0
        self.connected = asyncio.Event()
        self._identified = asyncio.Event()  # set by every IDENTIFY
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/users/@me"), self._get_me),
            ("GET", re.compile(r"/oauth2/applications/@me"), self._get_application),
            ("GET", re.compile(r"/gateway(/bot)?"), self._get_gateway),
            ("PUT", re.compile(r"/applications/(\d+)/commands"), self._put_commands),
            ("PUT", re.compile(r"/applications/(\d+)/guilds/(\d+)/commands"), self._put_commands),
            ("POST", re.compile(r"/interactions/(\d+)/([^/]+)/callback"), self._callback),
            ("POST", re.compile(r"/webhooks/(\d+)/([^/]+)"), self._followup),
            ("GET", re.compile(r"/webhooks/(\d+)/([^/]+)/messages/(@original|\d+)"), self._webhook_message),
            ("PATCH", re.compile(r"/webhooks/(\d+)/([^/]+)/messages/(@original|\d+)"), self._webhook_message),
            ("DELETE", re.compile(r"/webhooks/(\d+)/([^/]+)/messages/(@original|\d+)"), self._webhook_message),
            ("POST", re.compile(r"/users/@me/channels"), self._open_dm),
            ("POST", re.compile(r"/channels/(\d+)/messages"), self._channel_post),
            ("PATCH", re.compile(r"/channels/(\d+)/messages/(\d+)"), self._channel_message),
            ("DELETE", re.compile(r"/channels/(\d+)/messages/(\d+)"), self._channel_message),
            ("GET", re.compile(r"/applications/(\d+)/entitlements"), self._list_entitlements),
            ("POST", re.compile(r"/applications/(\d+)/entitlements/(\d+)/consume"), self._consume),
        ]

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{path:.+}", self._attachment_file)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for hold in self._holds:
            hold.release()
        for socket in list(self._sockets.values()):
            if not socket.closed:
                await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- clock and ids -------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        self.clock_offset += seconds

    def snowflake(self) -> int:
        milliseconds = int(self.now() * 1000) - DISCORD_EPOCH_MS
        return (milliseconds << 22) | (next(self._counter) % 4096)

    # --- people and places ---------------------------------------------------------------------

    def user(self, name: str) -> dict[str, Any]:
        user_id = self.snowflake()
        payload = {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": name.title(),
            "avatar": None,
            "public_flags": 0,
        }
        self.users[user_id] = payload
        return payload

    def dm_channel_id(self, user: dict[str, Any]) -> int:
        return self.dm_channels.setdefault(int(user["id"]), self.snowflake())

    def _dm_channel(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": str(self.dm_channel_id(user)),
            "type": 1,
            "last_message_id": None,
            "recipients": [user],
            "flags": 0,
        }

    def add_guild(self, shard: int = 0, shard_count: int = 1) -> int:
        """Another server the bot is in, whose id puts it on `shard` of `shard_count`."""
        milliseconds = int(self.now() * 1000) - DISCORD_EPOCH_MS
        milliseconds += (shard - (milliseconds % shard_count)) % shard_count
        guild_id = (milliseconds << 22) | (next(self._counter) % 4096)
        self.guild_ids.append(guild_id)
        return guild_id

    def shard_of(self, guild_id: int | None) -> int:
        return 0 if guild_id is None else (guild_id >> 22) % self.shard_count

    def _guild_channel(self, channel_id: int, guild_id: int | None = None) -> dict[str, Any]:
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id or self.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def _member(self, user: dict[str, Any], with_user: bool = True) -> dict[str, Any]:
        member: dict[str, Any] = {
            "roles": [],
            "joined_at": _iso(self.now() - 86400),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "permissions": str(GUILD_BOT_PERMISSIONS),
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "communication_disabled_until": None,
        }
        if with_user:
            member["user"] = user
        return member

    # --- driving the bot -----------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """To the connection of the shard the event's guild belongs to (once it has identified)."""
        shard = self.shard_of(int(data["guild_id"]) if data.get("guild_id") else None)
        await asyncio.wait_for(self.connected.wait(), 5)
        async with asyncio.timeout(5):  # with several shards, the one the event belongs to
            while (socket := self._sockets.get(shard)) is None:
                self._identified.clear()
                await self._identified.wait()
        self._sequence += 1
        await socket.send_json({"op": 0, "t": event, "s": self._sequence, "d": data})

    # --- pictures users bring ---------------------------------------------------------------------

    def attachment(
        self, data: bytes, filename: str = "photo.png", content_type: str | None = "image/png",
        *, declared_size: int | None = None,
    ) -> dict[str, Any]:
        """A file a user uploads, as Discord describes it (served here at its url). Give it as an option
        value to `slash`, or in `user_message`."""
        attachment_id = str(self.snowflake())
        self.attachment_files[f"{attachment_id}/{filename}"] = data
        url = f"http://127.0.0.1:{self.port}/attachments/{attachment_id}/{filename}"
        attachment: dict[str, Any] = {
            "id": attachment_id, "filename": filename, "size": declared_size or len(data), "url": url,
            "proxy_url": url,
        }
        if content_type:
            attachment["content_type"] = content_type
        return attachment

    def user_message(self, user: dict[str, Any], attachments: list[dict[str, Any]], content: str = "") -> FakeMessage:
        """A message a user posted in the guild channel, with files."""
        message = self._new_message(self.channel_id)
        message.author, message.content, message.attachments = user, content, attachments
        return message

    async def message_command(self, name: str, target: FakeMessage, *, user: dict[str, Any]) -> FakeInteraction:
        """Apps → `name` on `target`, as the Discord client sends it (the message in resolved data)."""
        data = {
            "id": self._command_id(name), "name": name, "type": MESSAGE_COMMAND, "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): target.to_json()}},
        }
        return await self._interact(APPLICATION_COMMAND, data, user=user, dm=False, channel_id=target.channel_id)

    async def submit_modal(
        self, opened_by: FakeInteraction, values: dict[str, str], *, user: dict[str, Any] | None = None
    ) -> FakeInteraction:
        """The user fills in the modal `opened_by` opened and submits it."""
        assert opened_by.modal is not None, "no modal was opened"
        rows = [
            {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]} for key, value in values.items()
        ]
        data = {"custom_id": opened_by.modal["custom_id"], "components": rows}
        submitter = user or self.users[opened_by.user_id]
        message_json = opened_by.payload.get("message")
        message = self.messages.get(int(message_json["id"])) if message_json else None
        return await self._interact(
            MODAL_SUBMIT, data, user=submitter, dm=False, channel_id=opened_by.channel_id, message=message
        )

    async def _attachment_file(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if path not in self.attachment_files:
            return web.Response(status=404)
        self.downloads.append(path)
        return web.Response(body=self.attachment_files[path], content_type="application/octet-stream")

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: dict[str, Any],
        subcommand: str | None = None,
        dm: bool = False,
        channel_id: int | None = None,
        app_permissions: int | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        guild_id: int | None = None,
    ) -> FakeInteraction:
        """/name [subcommand] option:value... as a user typed it (in `guild_id`, default the first
        server). A dict value is a user option."""
        resolved: dict[str, Any] = {}
        typed = []
        for key, value in (options or {}).items():
            if isinstance(value, dict) and "filename" in value:
                typed.append({"name": key, "type": ATTACHMENT_OPTION, "value": value["id"]})
                resolved.setdefault("attachments", {})[value["id"]] = value
            elif isinstance(value, dict):
                typed.append({"name": key, "type": 6, "value": value["id"]})
                resolved.setdefault("users", {})[value["id"]] = value
                if not dm:
                    resolved.setdefault("members", {})[value["id"]] = self._member(value, with_user=False)
            elif isinstance(value, bool):
                typed.append({"name": key, "type": 5, "value": value})
            elif isinstance(value, int):
                typed.append({"name": key, "type": 4, "value": value})
            else:
                typed.append({"name": key, "type": 3, "value": value})
        if subcommand is not None:
            typed = [{"name": subcommand, "type": 1, "options": typed}]
        data: dict[str, Any] = {"id": self._command_id(name), "name": name, "type": 1, "options": typed}
        if resolved:
            data["resolved"] = resolved
        return await self._interact(
            APPLICATION_COMMAND,
            data,
            user=user,
            dm=dm,
            channel_id=channel_id,
            app_permissions=app_permissions,
            upload_limit=upload_limit,
            guild_id=guild_id,
        )

    async def autocomplete(
        self, name: str, focused: str, value: str, *, user: dict[str, Any], dm: bool = False
    ) -> FakeInteraction:
        data = {
            "id": self._command_id(name),
            "name": name,
            "type": 1,
            "options": [{"name": focused, "type": 3, "value": value, "focused": True}],
        }
        return await self._interact(AUTOCOMPLETE, data, user=user, dm=dm)

    async def press(
        self,
        message: FakeMessage,
        custom_id: str,
        *,
        user: dict[str, Any],
        app_permissions: int | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
    ) -> FakeInteraction:
        """A click on a button of `message`, as the Discord client sends it (the message rides along)."""
        dm = message.channel_id in self.dm_channels.values()
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(
            MESSAGE_COMPONENT,
            data,
            user=user,
            dm=dm,
            channel_id=message.channel_id,
            message=message,
            app_permissions=app_permissions,
            upload_limit=upload_limit,
        )

    def entitle(self, user: dict[str, Any], sku_id: int | str, *, test: bool = False) -> dict[str, Any]:
        """The user bought a (consumable) SKU: the entitlement Discord keeps. Dispatch it with
        `entitlement_event`, or leave it for the bot to find at start-up."""
        entitlement = {
            "id": str(self.snowflake()), "sku_id": str(sku_id), "application_id": str(self.application_id),
            "user_id": user["id"], "type": 4 if test else 1, "deleted": False, "consumed": False,
            "starts_at": None, "ends_at": None,
        }
        self.entitlements[entitlement["id"]] = entitlement
        return entitlement

    async def entitlement_event(self, event: str, entitlement: dict[str, Any]) -> None:
        """ENTITLEMENT_CREATE, or ENTITLEMENT_DELETE (Discord refunded it: it is then deleted)."""
        if event == "ENTITLEMENT_DELETE":
            entitlement["deleted"] = True
        await self.dispatch(event, dict(entitlement))

    async def redeliver(self, interaction: FakeInteraction) -> None:
        """The same event once more (gateways do redeliver, e.g. after a resume)."""
        await self.dispatch("INTERACTION_CREATE", interaction.payload)

    async def _interact(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user: dict[str, Any],
        dm: bool,
        channel_id: int | None = None,
        message: FakeMessage | None = None,
        app_permissions: int | None = None,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        guild_id: int | None = None,
    ) -> FakeInteraction:
        interaction_id = self.snowflake()
        guild_id = guild_id or self.guild_id
        token = f"aW50ZXJhY3Rpb24{secrets.token_urlsafe(48)}"
        if dm:
            channel = self._dm_channel(user)
        else:
            channel = self._guild_channel(channel_id or self.channel_id, guild_id)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel": channel,
            "channel_id": channel["id"],
            "token": token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": upload_limit,
        }
        if dm:
            payload.update(
                user=user,
                app_permissions=str(DM_BOT_PERMISSIONS if app_permissions is None else app_permissions),
                context=1,
                authorizing_integration_owners={"0": "0"},
            )
        else:
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                member=self._member(user),
                app_permissions=str(GUILD_BOT_PERMISSIONS if app_permissions is None else app_permissions),
                context=0,
                authorizing_integration_owners={"0": str(guild_id)},
            )
        if message is not None:
            payload["message"] = message.to_json()
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=kind,
            payload=payload,
            channel_id=int(channel["id"]),
            user_id=int(user["id"]),
            created=self.now(),
            upload_limit=upload_limit,
        )
        self.interactions[token] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    def _command_id(self, name: str) -> str:
        for commands in self.commands.values():
            for command in commands:
                if command["name"] == name:
                    return str(command["id"])
        return str(self.snowflake())

    # --- scripted trouble ----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        times: int = 1,
        uploads_only: bool = False,
        where: Callable[[Any], bool] | None = None,
    ) -> None:
        """The next `times` matching requests get this answer. `uploads_only`: only requests carrying files;
        `where`: only requests whose JSON body it accepts."""
        script = _Scripted(method, re.compile(path_pattern), status, body, headers or {}, times, uploads_only, where)
        self._scripted.append(script)

    def rate_limit_next(self, method: str, path_pattern: str, retry_after: float = 0.05) -> None:
        """A per-route 429 exactly as Discord sends it (discord.py waits retry_after, then retries)."""
        self.fail_next(
            method,
            path_pattern,
            429,
            {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
            {
                "Retry-After": str(max(1, int(retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": str(retry_after),
                "X-RateLimit-Bucket": "fakebucket",
                "X-RateLimit-Scope": "user",
                "Via": "1.1 google",
            },
        )

    def hold(
        self, method: str, path_pattern: str, *, uploads_only: bool = False, carried_out: bool = True
    ) -> Hold:
        """From now on, matching requests are carried out but not answered until the hold is released (or
        the fake stops): Discord has done what was asked, the answer is on its way back. With
        `carried_out=False` they wait before being carried out: still on their way to Discord."""
        hold = Hold(method, re.compile(path_pattern), uploads_only, carried_out)
        self._holds.append(hold)
        return hold

    def plant_message(self, channel_id: int, buttons: list[dict[str, Any]]) -> FakeMessage:
        """A bot message that exists without this run having sent it (an older version's, say)."""
        message = self._new_message(channel_id)
        message.content = "an old message"
        message.components = [{"type": 1, "components": buttons}]
        return message

    def forbid_channel(self, channel_id: int, code: int = 50013, message: str = "Missing Permissions") -> None:
        self.channel_errors[channel_id] = (403, code, message)

    # --- reading what happened -----------------------------------------------------------------

    def requests_for(self, interaction: FakeInteraction) -> list[Recorded]:
        return [r for r in self.requests if interaction.token in r.path]

    def original(self, interaction: FakeInteraction) -> FakeMessage | None:
        if interaction.original_id is None:
            return None
        return self.messages.get(interaction.original_id)

    def followups(self, interaction: FakeInteraction) -> list[FakeMessage]:
        return [
            m
            for m in self.messages.values()
            if m.interaction_token == interaction.token and m.id != interaction.original_id and not m.deleted
        ]

    def ephemeral_texts(self, interaction: FakeInteraction) -> list[str]:
        """What only the user saw: the ephemeral messages made through this interaction (not "thinking…")."""
        return [
            m.content
            for m in self.messages.values()
            if m.interaction_token == interaction.token and m.ephemeral and not m.loading and not m.deleted
        ]

    def channel_messages(self, channel_id: int) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted and not m.ephemeral]

    # --- gateway -------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(max_msg_size=0)
        await socket.prepare(request)
        await socket.send_json(
            {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
        )
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            op = message.get("op")
            if op == 2:
                if message["d"].get("token") != self.token:
                    await socket.close(code=4004, message=b"Authentication failed.")
                    break
                self.identifies.append(message["d"])
                shard, self.shard_count = message["d"].get("shard") or (0, 1)
                self._sockets[shard] = socket
                self._sequence = 1
                await socket.send_json({"op": 0, "t": "READY", "s": self._sequence, "d": self._ready(shard)})
                self.connected.set()
                self._identified.set()
            elif op == 1:
                self.heartbeats += 1
                await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op == 6:
                # No resuming here: Discord's answer to a resume it can't honour is "invalid session".
                await socket.send_json({"op": 9, "d": False, "s": None, "t": None})
        for shard, held in list(self._sockets.items()):
            if held is socket:
                del self._sockets[shard]
        if not self._sockets:
            self.connected.clear()
        return socket

    def _ready(self, shard: int) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [
                {"id": str(guild_id), "unavailable": True}
                for guild_id in self.guild_ids
                if self.shard_of(guild_id) == shard
            ],
            "session_id": secrets.token_hex(16),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "shard": [shard, self.shard_count],
        }

    # --- REST: plumbing ------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len(API_PREFIX) :]
        body, files = await _read_body(request)
        record = Recorded(request.method, path, dict(request.query), body, files, time.monotonic())
        self.requests.append(record)
        hold = next((hold for hold in self._holds if hold.matches(record)), None)
        if hold is not None and not hold.carried_out:
            hold.arrived.append(record)
            await hold.released.wait()
        response = await self._answer(request, path, body, files)
        record.status = response.status
        if hold is not None and hold.carried_out:
            hold.arrived.append(record)
            await hold.released.wait()
        return response

    async def _answer(self, request: web.Request, path: str, body: Any, files: list[Upload]) -> web.StreamResponse:
        token_routes = path.startswith(("/webhooks/", "/interactions/"))
        if not token_routes and request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        for script in self._scripted:
            if script.uploads_only and not files:
                continue
            if script.where is not None and not script.where(body):
                continue
            if script.times > 0 and script.method == request.method and script.pattern.fullmatch(path):
                script.times -= 1
                return _json(script.body, status=script.status, headers=script.headers)
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match and method == request.method:
                return await handler(request, body, files, *match.groups())
        return _error(404, 0, "404: Not Found")

    # --- REST: entitlements ------------------------------------------------------------------------

    async def _list_entitlements(self, request: web.Request, body: Any, files: list[Upload], app: str) -> web.Response:
        if int(app) != self.application_id:
            return _error(403, 50001, "Missing Access")
        query = request.query
        found = sorted(self.entitlements.values(), key=lambda e: int(e["id"]))
        if query.get("user_id"):
            found = [e for e in found if e["user_id"] == query["user_id"]]
        if query.get("sku_ids"):
            found = [e for e in found if e["sku_id"] in query["sku_ids"].split(",")]
        if query.get("exclude_deleted", "true") == "true":
            found = [e for e in found if not e["deleted"]]
        limit = min(int(query.get("limit", 100)), 100)
        if query.get("after"):
            found = [e for e in found if int(e["id"]) > int(query["after"])][:limit]
        else:
            if query.get("before"):
                found = [e for e in found if int(e["id"]) < int(query["before"])]
            found = found[-limit:]
        return _json(found)

    async def _consume(self, request: web.Request, body: Any, files: list[Upload], app: str, eid: str) -> web.Response:
        entitlement = self.entitlements.get(eid)
        if int(app) != self.application_id or entitlement is None:
            return _error(404, 10068, "Unknown Entitlement")
        if entitlement["consumed"]:
            return _error(400, 40074, "This entitlement has already been consumed.")  # as Discord words it
        entitlement["consumed"] = True
        self.consumed.append(eid)
        return web.Response(status=204)

    # --- REST: the bot itself ------------------------------------------------------------------

    async def _get_me(self, request: web.Request, body: Any, files: list[Upload]) -> web.Response:
        return _json(self.bot_user)

    async def _get_application(self, request: web.Request, body: Any, files: list[Upload]) -> web.Response:
        owner = {**self.bot_user, "id": str(self.snowflake()), "username": "owner", "bot": False}
        return _json(
            {
                "id": str(self.application_id),
                "name": "imagebot",
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner,
                "team": None,
                "verify_key": secrets.token_hex(32),
                "flags": 0,
                "bot": self.bot_user,
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "approximate_guild_count": 1,
            }
        )

    async def _get_gateway(self, request: web.Request, body: Any, files: list[Upload], bot: str | None) -> web.Response:
        data: dict[str, Any] = {"url": self.gateway_url}
        if bot:
            data.update(
                shards=1, session_start_limit={"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            )
        return _json(data)

    async def _put_commands(
        self, request: web.Request, body: Any, files: list[Upload], app: str, guild: str | None = None
    ) -> web.Response:
        if int(app) != self.application_id:
            return _error(403, 50001, "Missing Access")
        synced = []
        for command in body:
            synced.append(
                {
                    "id": str(self.snowflake()),
                    "application_id": app,
                    "version": str(self.snowflake()),
                    "type": command.get("type", 1),
                    "default_member_permissions": command.get("default_member_permissions"),
                    "nsfw": command.get("nsfw", False),
                    "options": command.get("options", []),
                    "description": command.get("description", ""),  # context-menu commands have none
                    **({"guild_id": guild} if guild else {}),
                    **command,
                }
            )
        self.commands[guild or "global"] = synced
        return _json(synced)

    # --- REST: interactions and their webhook --------------------------------------------------

    async def _callback(
        self, request: web.Request, body: Any, files: list[Upload], iid: str, token: str
    ) -> web.Response:
        interaction = self.interactions.get(token)
        if interaction is None or str(interaction.id) != iid:
            return _error(404, 10062, "Unknown interaction")
        if interaction.response_type is not None:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if self.now() - interaction.created > ACK_WINDOW_SECONDS:
            return _error(404, 10062, "Unknown interaction")
        kind = body.get("type")
        data = body.get("data") or {}
        resource: dict[str, Any] = {"type": kind}
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            problem = self._check(data, files, interaction.upload_limit, creating=kind == CHANNEL_MESSAGE)
            if problem is not None:
                return problem
            ephemeral = bool((data.get("flags") or 0) & EPHEMERAL)
            message = self._new_message(interaction.channel_id, interaction=interaction)
            message.type = 20 if interaction.type == APPLICATION_COMMAND else 0
            if kind == DEFERRED_CHANNEL_MESSAGE:
                message.flags = LOADING | (EPHEMERAL if ephemeral else 0)
            else:
                self._apply(message, data, files)
                message.flags = EPHEMERAL if ephemeral else 0
            interaction.ephemeral = ephemeral
            interaction.original_id = message.id
            resource["message"] = message.to_json()
        elif kind in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            if interaction.type != MESSAGE_COMPONENT:
                return _error(400, 50035, "Invalid Form Body")
            interaction.original_id = int(interaction.payload["message"]["id"])
            interaction.message_ids.add(interaction.original_id)
            if kind == UPDATE_MESSAGE:
                target = self.messages[interaction.original_id]
                problem = self._check(data, files, interaction.upload_limit, creating=False)
                if problem is not None:
                    return problem
                self._apply(target, data, files)
        elif kind == AUTOCOMPLETE_RESULT:
            interaction.choices = list(data.get("choices", []))
        elif kind == MODAL:
            if interaction.type not in (APPLICATION_COMMAND, MESSAGE_COMPONENT):
                return _error(400, 50035, "Invalid Form Body")
            problem = _modal_problem(data)
            if problem is not None:
                return problem
            interaction.modal = data
        else:
            return _error(400, 50035, "Invalid Form Body")
        interaction.response_type = kind
        answer: dict[str, Any] = {"interaction": {"id": iid, "type": interaction.type}}
        if interaction.original_id is not None and kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            answer["interaction"].update(
                response_message_id=str(interaction.original_id),
                response_message_loading=kind == DEFERRED_CHANNEL_MESSAGE,
                response_message_ephemeral=interaction.ephemeral,
            )
        answer["resource"] = resource
        if request.query.get("with_response") in ("1", "true", "True"):
            return _json(answer)
        return web.Response(status=204)

    def _token_interaction(self, app: str, token: str) -> FakeInteraction | web.Response:
        interaction = self.interactions.get(token)
        if interaction is None or int(app) != self.application_id:
            return _error(404, 10015, "Unknown Webhook")
        if self.now() - interaction.created > TOKEN_LIFETIME_SECONDS:
            return _error(401, 50027, "Invalid Webhook Token")
        if interaction.response_type is None:
            return _error(404, 10015, "Unknown Webhook")
        return interaction

    async def _followup(
        self, request: web.Request, body: Any, files: list[Upload], app: str, token: str
    ) -> web.Response:
        interaction = self._token_interaction(app, token)
        if isinstance(interaction, web.Response):
            return interaction
        original = self.original(interaction)
        replaces_loading = original is not None and original.loading and not original.deleted
        problem = self._check(body, files, interaction.upload_limit, creating=not replaces_loading)
        if problem is not None:
            return problem
        if replaces_loading:
            # Discord: the first followup after a "thinking" defer becomes that message, visibility included.
            assert original is not None
            self._apply(original, body, files)
            original.flags = EPHEMERAL if interaction.ephemeral else 0
            message = original
        else:
            message = self._new_message(interaction.channel_id, interaction=interaction)
            self._apply(message, body, files)
            message.flags = (body.get("flags") or 0) & EPHEMERAL
        return _json(message.to_json())

    async def _webhook_message(
        self, request: web.Request, body: Any, files: list[Upload], app: str, token: str, which: str
    ) -> web.StreamResponse:
        interaction = self._token_interaction(app, token)
        if isinstance(interaction, web.Response):
            return interaction
        message_id = interaction.original_id if which == "@original" else int(which)
        message = self.messages.get(message_id) if message_id is not None else None
        if message is None or message.deleted or message_id not in interaction.message_ids | {interaction.original_id}:
            return _error(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            problem = self._check(body, files, interaction.upload_limit, creating=False)
            if problem is not None:
                return problem
            self._apply(message, body, files)
            message.flags &= ~LOADING
            message.edited = self.now()
            message.edits += 1
        return _json(message.to_json())

    # --- REST: channels and DMs ----------------------------------------------------------------

    async def _open_dm(self, request: web.Request, body: Any, files: list[Upload]) -> web.Response:
        user = self.users.get(int(body["recipient_id"]))
        if user is None:
            return _error(400, 50033, "Invalid Recipient(s)")
        return _json(self._dm_channel(user))

    def _channel_problem(self, channel_id: int) -> web.Response | None:
        if channel_id in self.channel_errors:
            status, code, message = self.channel_errors[channel_id]
            return _error(status, code, message)
        for user_id, dm_id in self.dm_channels.items():
            if dm_id == channel_id and user_id in self.closed_dms:
                return _error(403, 50007, "Cannot send messages to this user")
        return None

    async def _channel_post(self, request: web.Request, body: Any, files: list[Upload], channel: str) -> web.Response:
        channel_id = int(channel)
        problem = self._channel_problem(channel_id) or self._check(body, files, DEFAULT_UPLOAD_LIMIT, creating=True)
        if problem is not None:
            return problem
        message = self._new_message(channel_id)
        self._apply(message, body, files)
        message.flags = (body.get("flags") or 0) & ~EPHEMERAL  # channel messages can't be ephemeral
        return _json(message.to_json())

    async def _channel_message(
        self, request: web.Request, body: Any, files: list[Upload], channel: str, which: str
    ) -> web.StreamResponse:
        channel_id = int(channel)
        problem = self._channel_problem(channel_id)
        if problem is not None:
            return problem
        message = self.messages.get(int(which))
        if message is None or message.deleted or message.channel_id != channel_id or message.ephemeral:
            return _error(404, 10008, "Unknown Message")
        if message.author["id"] != self.bot_user["id"]:
            return _error(403, 50005, "Cannot edit a message authored by another user")
        if request.method == "DELETE":
            message.deleted = True
            return web.Response(status=204)
        problem = self._check(body, files, DEFAULT_UPLOAD_LIMIT, creating=False)
        if problem is not None:
            return problem
        self._apply(message, body, files)
        message.flags &= ~LOADING
        message.edited = self.now()
        message.edits += 1
        return _json(message.to_json())

    # --- messages ------------------------------------------------------------------------------

    def _new_message(self, channel_id: int, interaction: FakeInteraction | None = None) -> FakeMessage:
        message = FakeMessage(self.snowflake(), channel_id, self.bot_user, self.now())
        if interaction is not None:
            message.webhook_id = self.application_id
            message.interaction_token = interaction.token
            interaction.message_ids.add(message.id)
        self.messages[message.id] = message
        return message

    def _check(self, body: Any, files: list[Upload], limit: int, *, creating: bool) -> web.Response | None:
        """Discord's validation of a message body, with its error codes."""
        body = body or {}
        content = body.get("content") or ""
        if len(content) > 2000:
            return _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        rows = body.get("components") or []
        if len(rows) > 5:
            return _form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        seen: set[str] = set()
        for row in rows:
            buttons = row.get("components", [])
            if row.get("type") != 1 or not 1 <= len(buttons) <= 5:
                return _form_error("components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
            for button in buttons:
                if button.get("style") == 6 and (
                    not button.get("sku_id") or any(button.get(k) for k in ("custom_id", "url", "label", "emoji"))
                ):
                    return _form_error("components", "BUTTON_COMPONENT_INVALID", "A premium button has only an sku_id")
                custom_id = button.get("custom_id")
                if custom_id is None:
                    continue
                if len(custom_id) > 100:
                    return _form_error("custom_id", "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
                if custom_id in seen:
                    return _form_error(
                        "custom_id", "COMPONENT_CUSTOM_ID_DUPLICATED", "Component custom id cannot be duplicated"
                    )
                seen.add(custom_id)
        if len(files) > 10:
            return _form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if any(len(f.data) > limit for f in files) or sum(len(f.data) for f in files) > limit:
            return _error(413, 40005, "Request entity too large")
        if creating and not (content or files or rows or body.get("embeds")):
            return _error(400, 50006, "Cannot send an empty message")
        return None

    def _apply(self, message: FakeMessage, body: Any, files: list[Upload]) -> None:
        body = body or {}
        if "content" in body:
            message.content = body["content"] or ""
        if "components" in body:
            message.components = body["components"] or []
        if "embeds" in body:
            message.embeds = body["embeds"] or []
        uploads = {}
        for upload in files:
            match = re.fullmatch(r"files\[(\d+)\]", upload.field)
            if match:
                uploads[match.group(1)] = upload
        if "attachments" in body:
            kept: list[dict[str, Any]] = []
            for entry in body["attachments"] or []:
                entry_id = str(entry["id"])
                existing = next((a for a in message.attachments if a["id"] == entry_id), None)
                if existing is not None:
                    kept.append(existing)
                elif entry_id in uploads:
                    kept.append(self._attach(message, uploads.pop(entry_id)))
            message.attachments = kept
        for upload in uploads.values():
            message.attachments.append(self._attach(message, upload))

    def _attach(self, message: FakeMessage, upload: Upload) -> dict[str, Any]:
        attachment_id = str(self.snowflake())
        message.files[attachment_id] = upload.data
        url = f"http://127.0.0.1:{self.port}/attachments/{message.channel_id}/{attachment_id}/{upload.filename}"
        return {
            "id": attachment_id,
            "filename": upload.filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": upload.content_type or _guess_type(upload.filename),
        }


async def _read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        body: Any = None
        files: list[Upload] = []
        async for part in reader:
            if not hasattr(part, "read"):
                continue
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "payload_json":
                body = json.loads(data)
            else:
                files.append(
                    Upload(part.name or "", part.filename or "", part.headers.get("Content-Type"), bytes(data))
                )
        return body, files
    raw = await request.read()
    return (json.loads(raw) if raw else None), []


def _modal_problem(data: dict[str, Any]) -> web.Response | None:
    """Discord's limits on a modal: a title of 1-45 characters, a custom_id of at most 100, 1-5 rows of
    text inputs whose prefilled value is at most 4000 characters."""
    if not 1 <= len(data.get("title") or "") <= 45:
        return _form_error("title", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
    if not 1 <= len(data.get("custom_id") or "") <= 100:
        return _form_error("custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    rows = data.get("components") or []
    if not 1 <= len(rows) <= 5:
        return _form_error("components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
    for row in rows:
        for item in row.get("components", []):
            if item.get("type") != 4 or len(item.get("value") or "") > 4000 or not item.get("custom_id"):
                return _form_error("components", "BASE_TYPE_BAD_LENGTH", "Invalid text input.")
    return None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json", no charset: discord.py only decodes a body with that content type.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status=status)


def _form_error(field_name: str, code: str, message: str) -> web.Response:
    body = {
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {field_name: {"_errors": [{"code": code, "message": message}]}},
    }
    return _json(body, status=400)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _guess_type(filename: str) -> str:
    extension = filename.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(
        extension, "application/octet-stream"
    )
