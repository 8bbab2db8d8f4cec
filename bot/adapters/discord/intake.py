"""Durable intake for Discord: an interaction the bot defers is written into the inbox with its token, so that
a process dying before the job is accepted doesn't leave "thinking…" forever. It is written while the
deferral is on its way (from the raw gateway event, acks.py, or the usual way), not once Discord answered
it: a process dying while the answer travels back leaves it recorded too. The next start answers each one
still unhandled while its token is good (15 minutes): if its job was accepted after all (the same
interaction id is the request's idempotency key) nothing needs saying, otherwise the deferred message says
the request was not taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import discord

from bot.adapters.discord import internals
from bot.adapters.discord.context import PLATFORM
from bot.core.inbox import Inbox

log = logging.getLogger(__name__)

TOKEN_SECONDS = 15 * 60  # how long Discord accepts an interaction token
NOT_TAKEN = "The bot restarted before taking your request. Nothing was charged, please try again."


class DiscordIntake:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._sweeper: asyncio.Task[None] | None = None
        # Interactions being recorded as their deferral goes out (`deferring`), by id, for `deferred`.
        self._recording: dict[str, asyncio.Task[bool]] = {}

    def start(self, client: discord.Client) -> None:
        """Answer what an earlier process left over, now and again every claim period: one it was handling
        when it died is claimed by it until the claim runs out (well within the token's 15 minutes)."""
        self._sweeper = asyncio.create_task(self._sweep(client), name="discord-inbox-sweep")

    async def stop(self) -> None:
        for task in self._recording.values():
            task.cancel()
        self._recording.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self, client: discord.Client) -> None:
        while True:
            try:
                await self.answer_left_over(client)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("discord: the inbox could not be read (%r); trying again later", error)
            await asyncio.sleep(self.inbox.claim_seconds)

    def deferring(self, interaction_id: int | str, application_id: int | str | None, token: str) -> None:
        """An interaction whose deferral is being sent (from its raw gateway event, or the usual way):
        recorded (and claimed) in the background, once; `deferred` then waits for that instead of
        recording it again."""
        event_id = str(interaction_id)
        if event_id in self._recording:
            return
        payload = {"application_id": str(application_id), "token": token, "deferred_at": time.time()}
        self._recording[event_id] = asyncio.create_task(self._record(event_id, payload))
        # A command that never ran (discord.py refused the event) must not leave its entry behind.
        asyncio.get_running_loop().call_later(TOKEN_SECONDS, self._recording.pop, event_id, None)

    async def deferred(self, interaction: discord.Interaction) -> bool:
        """Once deferred: whether the interaction is recorded and claimed by this process. False if the
        database couldn't take it (the command goes on regardless: only a crash in the next moments would
        then leave it unanswered)."""
        self.deferring(interaction.id, interaction.application_id, interaction.token)  # if it wasn't already
        return await self._recording.pop(str(interaction.id))

    async def _record(self, event_id: str, payload: dict[str, Any]) -> bool:
        try:
            # Recorded before (a redelivery, or by a process that died): ours only if its claim ran out.
            return await self.inbox.record_claimed(PLATFORM, event_id, payload) or await self.inbox.claim(
                PLATFORM, event_id
            )
        except (OSError, asyncpg.PostgresError) as error:
            log.warning("interaction %s: not recorded in the inbox (%r)", event_id, error)
            return False

    async def handled(self, interaction: discord.Interaction) -> None:
        try:
            await self.inbox.handled(PLATFORM, str(interaction.id))
        except (OSError, asyncpg.PostgresError) as error:
            # Left for the next start, which finds its job accepted (or says it wasn't): harmless.
            log.warning("interaction %s: not marked handled in the inbox (%r)", interaction.id, error)

    async def answer_left_over(self, client: discord.Client) -> int:
        """Answer the interactions a process that died deferred and never handled: how many were told their
        request was not taken."""
        told = 0
        now = datetime.now(UTC)
        for event in await self.inbox.unhandled(PLATFORM):
            if not await self.inbox.claim(PLATFORM, event.event_id):
                continue
            fresh = (now - event.received_at).total_seconds() < TOKEN_SECONDS
            if fresh and not await self._accepted(event.event_id):
                told += await self._tell(client, event.event_id, event.payload)
            await self.inbox.handled(PLATFORM, event.event_id)
        return told

    async def _accepted(self, interaction_id: str) -> bool:
        async with self.inbox.pool.acquire() as conn:
            return bool(await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM image.generations WHERE idempotency_key = $1)",
                f"{PLATFORM}:{interaction_id}",
            ))

    async def _tell(self, client: discord.Client, interaction_id: str, payload: Any) -> int:
        try:
            webhook = internals.interaction_webhook(int(payload["application_id"]), payload["token"], client)
            # Recorded as its deferral went out, it has no message id (older versions wrote one down).
            message_id = int(payload["message_id"]) if "message_id" in payload else internals.ORIGINAL_RESPONSE
            await webhook.edit_message(message_id, content=NOT_TAKEN, view=None)
        except (KeyError, TypeError, ValueError):
            log.warning("interaction %s: recorded without what answering it needs", interaction_id)
            return 0
        except discord.HTTPException as error:  # deleted meanwhile, token expired: nothing to show it on
            log.info("interaction %s: left-over deferral not answered: %s", interaction_id, error)
            return 0
        log.info("interaction %s: told the request was not taken before the restart", interaction_id)
        return 1
