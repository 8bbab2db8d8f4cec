"""Deferred Discord interactions in the inbox: recorded with their token when "thinking…" shows, handled once
the job is accepted, and answered (not left "thinking…") when the process handling them died first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bot.adapters.discord.intake import NOT_TAKEN
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import finished, running_bot, serving_fake
from tests.fakes.discord_server import FakeDiscord

SIXTEEN_MINUTES = 16 * 60


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def inbox_row(pool: asyncpg.Pool, interaction_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT payload, handled_at FROM image.inbox WHERE platform = 'discord' AND event_id = $1",
        str(interaction_id),
    )


async def test_a_deferred_interaction_is_recorded_and_handled_once_its_job_is_accepted(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, pool: asyncpg.Pool
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse on record"}, user=alice)
        await wait_for(finished(fake, interaction), within=30)
    row = await inbox_row(pool, interaction.id)
    assert row is not None and row["handled_at"] is not None
    assert '"token"' in row["payload"] and interaction.token in row["payload"]


async def test_a_deferral_its_dead_handler_left_is_answered_not_left_thinking(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = fake.user("alice")
    reached, released = asyncio.Event(), asyncio.Event()

    async def never_accepted(*args: Any, **kwargs: Any) -> Any:
        # The process "dies" here: the interaction is deferred and recorded, its job not accepted yet.
        reached.set()
        await released.wait()
        raise asyncio.CancelledError

    async with running_bot(runtime_factory, fake, inbox_claim_seconds=1) as bot:
        monkeypatch.setattr(bot.runtime.service, "imagine", never_accepted)
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse nobody took"}, user=alice)
        await wait_for(reached.is_set, within=10)
        assert (row := await inbox_row(pool, interaction.id)) is not None and row["handled_at"] is None
        # What its death leaves: a claim by a process that is gone, run out.
        await pool.execute(
            "UPDATE image.inbox SET claimed_by = 'dead', claimed_until = now() WHERE event_id = $1",
            str(interaction.id),
        )
        await wait_for(lambda: _says(fake, interaction, NOT_TAKEN), within=10)
        await wait_for(lambda: _handled(pool, interaction.id), within=10)
        released.set()
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0


def _says(fake: FakeDiscord, interaction: Any, text: str) -> bool:
    message = fake.original(interaction)
    return message is not None and message.content == text


async def _handled(pool: asyncpg.Pool, interaction_id: int) -> bool:
    row = await inbox_row(pool, interaction_id)
    return row is not None and row["handled_at"] is not None


async def test_a_redelivery_posts_only_the_messages_without_a_receipt(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, pool: asyncpg.Pool
) -> None:
    """Two images over two channel messages (a small upload limit, the token expired): the follow-up fails
    once; the retry posts it and leaves the first message alone."""
    alice = fake.user("alice")
    fake.fail_next(
        "POST", r"/channels/\d+/messages", 503, {"message": "Service Unavailable", "code": 0}, uploads_only=True,
        where=lambda body: "continued" in str(body),
    )
    async with running_bot(
        runtime_factory, fake, start_worker=False, job_lease_seconds=1.5, worker_poll_seconds=0.1
    ) as bot:
        await fake.slash(
            "imagine", {"prompt": "a big detailed city", "count": 2}, user=alice, upload_limit=20_000
        )
        await wait_for(lambda: pool.fetchval("SELECT count(*) = 1 FROM image.generations"))
        fake.advance(SIXTEEN_MINUTES)
        bot.frontend.observer.clock = lambda: time.time() + SIXTEEN_MINUTES
        await bot.start_worker()
        await wait_for(lambda: pool.fetchval("SELECT delivered_at IS NOT NULL FROM image.generations"), within=30)
    posted = [m for m in fake.channel_messages(fake.channel_id) if m.attachments]
    assert len(posted) == 2, [m.content for m in posted]  # the first message once, the follow-up once
    assert "continued" in posted[1].content
    parts = await pool.fetch("SELECT part FROM image.delivery_parts ORDER BY created_at")
    assert [p["part"] for p in parts] == ["first", "more-1"]


async def test_a_deferral_refused_as_too_late_leaves_nothing_to_answer(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, pool: asyncpg.Pool
) -> None:
    # Recorded as the deferral went out; Discord refused it (the interaction is dead): handled at once, so
    # that no later sweep tries to say anything about it.
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        fake.fail_next("POST", r"/interactions/\d+/[^/]+/callback", 404, {"message": "Unknown interaction",
                                                                          "code": 10062})
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse too late"}, user=alice)
        await wait_for(lambda: _handled(pool, interaction.id), within=10)
    assert fake.original(interaction) is None
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
