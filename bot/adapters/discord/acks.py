"""Early acknowledgements: the interactions that start a job (/imagine, 🔄, V1–V4) are deferred from the
raw gateway event, before discord.py builds its objects and before the command runs.

Discord shows "thinking…" only once the deferral arrives, and under a burst the event loop is busy with
the previous interactions' work: a command coroutine reaches `defer()` late (bench/burst.py measures by
how much). Here the deferral is written in the same step that read the event, on a connection kept open
for it (keepalive.py), and discord.py's processing of the event is put after every acknowledgement
already queued.

The command later adopts the acknowledgement (`adopt`): discord.py then treats the interaction as
deferred, exactly as if `interaction.response.defer(thinking=True)` had been awaited."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord
from discord.enums import InteractionResponseType

from bot.adapters.discord import internals
from bot.adapters.discord.keepalive import KeepAliveError, KeepAlivePool, Response
from bot.core.metrics import PLATFORM_ERRORS

log = logging.getLogger(__name__)

DEFERRED_CHANNEL_MESSAGE = InteractionResponseType.deferred_channel_message
# Discord's codes for an interaction that can't be answered: already acknowledged, or unknown (too late).
ALREADY_ACKNOWLEDGED = 40060
UNKNOWN_INTERACTION = 10062
# An interaction token is good for 15 minutes; nothing adopts an acknowledgement that late.
FORGET_AFTER_SECONDS = 15 * 60


class AckRefused(Exception):
    def __init__(self, status: int, code: int | None, text: str) -> None:
        super().__init__(f"{status} {code} {text}")
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Deferral:
    """An accepted deferral: the id of its "thinking…" message, when Discord said."""

    message_id: int | None


class EarlyAcks:
    """`wanted(raw_interaction)` says whether the command would answer with a public deferral;
    `deferring(interaction_id, application_id, token)` is told of each deferral as soon as it is sent."""

    def __init__(
        self, client: discord.Client, wanted: Callable[[dict[str, Any]], bool], *, warm: int,
        deferring: Callable[[str, str | None, str], None] | None = None,
    ) -> None:
        self.client = client
        self.wanted = wanted
        self.deferring = deferring
        self.warm = warm
        self._pending: dict[int, asyncio.Task[Response]] = {}
        self._backlog: collections.deque[dict[str, Any]] = collections.deque()
        self._pool: KeepAlivePool | None = None
        self._parse = internals.intercept_interactions(client, self._on_interaction)

    def _on_interaction(self, data: dict[str, Any]) -> None:
        try:
            early = self.wanted(data)
        except Exception:  # a payload we misread: let discord.py and the command deal with it as usual
            log.warning("interaction %s: early acknowledgement check failed", data.get("id"), exc_info=True)
            early = False
        if not early:
            self._parse(data)
            return
        path = f"/interactions/{data['id']}/{data['token']}/callback?with_response=true"
        interaction_id = int(data["id"])
        self._pending[interaction_id] = self._http().post(path, {"type": DEFERRED_CHANNEL_MESSAGE.value})
        if self.deferring is not None:
            self.deferring(data["id"], data.get("application_id"), data["token"])
        loop = asyncio.get_running_loop()
        # A command that never ran (discord.py refused the event) must not leave its entry behind.
        loop.call_later(FORGET_AFTER_SECONDS, self._pending.pop, interaction_id, None)
        # discord.py's work on these events runs one event per turn of the event loop, so that the gateway
        # is read (and its events acknowledged) between any two of them.
        self._backlog.append(data)
        if len(self._backlog) == 1:
            loop.call_soon(self._parse_next)

    def _parse_next(self) -> None:
        data = self._backlog.popleft()
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._parse_next)
        self._parse(data)

    def start(self) -> None:
        """Open the warm connections (in the background)."""
        self._http().start()

    def _http(self) -> KeepAlivePool:
        if self._pool is None:
            self._pool = KeepAlivePool(discord.http.Route.BASE, self.client.http.user_agent, warm=self.warm)
        return self._pool

    async def adopt(self, interaction: discord.Interaction) -> Deferral | None:
        """The early deferral's result, with `interaction.response` marked as deferred. None when there was
        none, or when it failed in transit (the command then defers the usual way). Raises AckRefused when
        Discord refused it (already answered, or too late)."""
        task = self._pending.pop(interaction.id, None)
        if task is None:
            return None
        interaction.extras["early_ack"] = True
        try:
            response = await task
        except KeepAliveError as error:
            log.warning("interaction %s: early acknowledgement failed in transit: %s", interaction.id, error)
            return None
        try:
            payload = response.json()
        except ValueError:  # a proxy's HTML error page, say
            payload = None
        if response.status >= 300:
            if response.status >= 400:  # as frontend.count_http_errors counts discord.py's
                PLATFORM_ERRORS.labels("discord", f"http_{response.status}").inc()
            code = payload.get("code") if isinstance(payload, dict) else None
            raise AckRefused(response.status, code, response.body[:200].decode(errors="replace"))
        answered = payload.get("interaction") if isinstance(payload, dict) else None
        if not isinstance(answered, dict):
            # Accepted, but with no callback resource to build on: the usual deferral follows, and its
            # "already acknowledged" answer counts as deferred (commands._defer).
            log.warning("interaction %s: early acknowledgement answered without a resource", interaction.id)
            return None
        internals.mark_deferred(interaction)
        message_id = answered.get("response_message_id")
        return Deferral(int(message_id) if message_id is not None else None)

    async def aclose(self) -> None:
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()
        if self._pool is not None:
            await self._pool.aclose()
