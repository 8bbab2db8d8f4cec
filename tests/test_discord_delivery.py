"""Delivery that outlives the interaction: restarts (persistent buttons, jobs queued before a restart),
tokens that expired (ordinary channel message), channels that refuse us (DM), and streamed previews."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bot.core.catalogue import ModelSpec
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import finished, generation_id, running_bot, serving_fake
from tests.fakes.discord_server import FakeDiscord, FakeInteraction, FakeMessage
from tests.fakes.openai_server import fake_openai_server, moderation_blocked

SIXTEEN_MINUTES = 16 * 60


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


def queued(fake: FakeDiscord, interaction: FakeInteraction) -> FakeMessage | None:
    message = fake.original(interaction)
    return message if message is not None and "Queued" in message.content else None


def posted_by_the_bot(fake: FakeDiscord, channel_id: int) -> list[FakeMessage]:
    """Ordinary messages (the bot's own channel sends, not interaction responses) carrying images."""
    return [m for m in fake.channel_messages(channel_id) if m.interaction_token is None and m.attachments]


async def test_buttons_of_a_message_from_before_a_restart_still_work(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake):
        result = await wait_for(finished(fake, await fake.slash("imagine", {"prompt": "an old map"}, user=alice)))
    # A new process: new runtime, new client, new gateway session; the same database and the same message.
    async with running_bot(runtime_factory, fake) as bot:
        press = await fake.press(result, result.custom_id("🔄"), user=bob)
        again = await wait_for(finished(fake, press))
        [made] = await bot.generations(bob)
        assert made.kind == "regenerate" and made.parent_generation_id == generation_id(result)
        assert await bot.balance(bob) == 19
    assert len(fake.identifies) == 2 and len(again.attachments) == 1


async def test_a_job_queued_before_a_restart_is_delivered_after_it(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, start_worker=False):
        interaction = await fake.slash("imagine", {"prompt": "a patient lighthouse", "count": 2}, user=alice)
        await wait_for(lambda: queued(fake, interaction))
    async with running_bot(runtime_factory, fake):
        # The new process found the job and the token in Postgres, and edits the same message.
        message = await wait_for(finished(fake, interaction))
    assert len(message.attachments) == 2 and message.labels() == ["🔄", "V1", "V2", "✏️1", "✏️2", "🗑"]


@pytest.mark.parametrize("bot_knows", [True, False], ids=["bot-sees-expiry", "discord-says-401"])
async def test_after_the_token_expires_the_result_is_an_ordinary_channel_message(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, bot_knows: bool
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, start_worker=False) as bot:
        interaction = await fake.slash("imagine", {"prompt": "a very long queue"}, user=alice)
        await wait_for(lambda: queued(fake, interaction))
        fake.advance(SIXTEEN_MINUTES)
        if bot_knows:
            bot.frontend.observer.clock = lambda: time.time() + SIXTEEN_MINUTES
        await bot.start_worker()
        [message] = await wait_for(lambda: posted_by_the_bot(fake, fake.channel_id))
        await wait_for(lambda: "below" in fake.original(interaction).content)  # type: ignore[union-attr]
    assert "a very long queue" in message.content and message.labels() == ["🔄", "V1", "✏️Remix", "🗑"]
    late = [r for r in fake.requests_for(interaction) if r.method == "PATCH" and "Queued" not in r.json["content"]]
    assert [r.status for r in late] == ([] if bot_knows else [401, 401])  # "generating", then the result


async def test_a_channel_that_refuses_us_gets_the_images_sent_by_dm(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, start_worker=False) as bot:
        interaction = await fake.slash("imagine", {"prompt": "a locked room"}, user=alice)
        await wait_for(lambda: queued(fake, interaction))
        fake.advance(SIXTEEN_MINUTES)
        fake.forbid_channel(fake.channel_id)  # e.g. Send Messages was taken away meanwhile
        await bot.start_worker()
        [message] = await wait_for(lambda: posted_by_the_bot(fake, fake.dm_channel_id(alice)))
    assert "couldn't post in" in message.content and len(message.attachments) == 1
    assert message.labels() == ["🔄", "V1", "✏️Remix", "🗑"]


async def test_a_streamed_preview_is_shown_in_the_status_message(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    streaming = ModelSpec(
        name="streamer", provider="openai", provider_model="gpt-image-1", cost=2, options={"partial_images": 1}
    )
    async with fake_openai_server() as openai:
        async with running_bot(
            runtime_factory, fake, openai_api_key="sk-test", openai_base_url=openai.base_url, models=(streaming,)
        ):
            interaction = await fake.slash("imagine", {"prompt": "a slow sunrise", "model": "streamer"}, user=alice)
            await wait_for(finished(fake, interaction))
    previews = [r for r in fake.requests_for(interaction) if any(f.filename.startswith("preview") for f in r.files)]
    assert len(previews) == 1 and "Generating" in previews[0].json["content"]


async def test_cancel_while_running_stops_the_job_and_refunds(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, offline_delay_seconds=5.0) as bot:
        interaction = await fake.slash("imagine", {"prompt": "a slow painting", "count": 2}, user=alice)
        running = await wait_for(lambda: (m := fake.original(interaction)) and "Generating" in m.content and m)
        cancel = await fake.press(running, running.custom_id("✖Cancel"), user=alice)
        assert await wait_for(lambda: fake.ephemeral_texts(cancel)) == ["Cancelled. 2 credits refunded."]
        await wait_for(lambda: "Cancelled" in running.content)
        assert await bot.balance(alice) == 20
    assert running.components == [] and running.attachments == []


async def test_a_failure_after_the_token_expired_pings_the_owner_in_the_channel(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with fake_openai_server() as openai:
        openai.queue(moderation_blocked())
        async with running_bot(
            runtime_factory, fake, start_worker=False, openai_api_key="sk-test", openai_base_url=openai.base_url
        ) as bot:
            interaction = await fake.slash(
                "imagine", {"prompt": "refused later", "model": "gpt-image-1-mini"}, user=alice
            )
            await wait_for(lambda: queued(fake, interaction))
            fake.advance(SIXTEEN_MINUTES)
            bot.frontend.observer.clock = lambda: time.time() + SIXTEEN_MINUTES
            await bot.start_worker()
            [notice] = await wait_for(
                lambda: [m for m in fake.channel_messages(fake.channel_id) if m.interaction_token is None]
            )
            await wait_for(lambda: fake.original(interaction).deleted)  # type: ignore[union-attr]
    assert notice.content.startswith(f"<@{alice['id']}> ") and "2 credits refunded" in notice.content
    [sent] = [r for r in fake.requests if r.method == "POST" and r.path == f"/channels/{fake.channel_id}/messages"]
    assert sent.json["allowed_mentions"] == {"parse": [], "users": [int(alice["id"])]}  # only the owner is pinged


async def test_twenty_people_at_once_are_all_acknowledged_quickly_and_served(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    users = [fake.user(f"user{i}") for i in range(20)]
    async with running_bot(runtime_factory, fake):
        sent_at = time.monotonic()
        interactions = await asyncio.gather(
            *(fake.slash("imagine", {"prompt": f"portrait number {i}"}, user=u) for i, u in enumerate(users))
        )
        for interaction in interactions:
            await wait_for(finished(fake, interaction))
    deferrals = [fake.requests_for(i)[0] for i in interactions]
    assert all(d.callback_type == 5 for d in deferrals)
    assert max(d.at for d in deferrals) - sent_at < 1.0  # well inside Discord's 3 seconds
