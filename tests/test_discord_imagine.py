"""/imagine and its buttons, through the real discord.py against a fake Discord (REST + gateway) on
127.0.0.1, on a real test database with the offline model. Assertions are on what Discord received."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from bot.adapters.discord.frontend import DiscordFrontEnd
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import finished, generation_id, identity, running_bot, serving_fake
from tests.fakes.discord_server import (
    ATTACH_FILES,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    EPHEMERAL,
    GUILD_BOT_PERMISSIONS,
    FakeDiscord,
)
from tests.fakes.openai_server import fake_openai_server, moderation_blocked


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def test_start_up_identifies_heartbeats_and_syncs_commands_for_guilds_and_dms(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    async with running_bot(runtime_factory, fake):
        await wait_for(lambda: fake.heartbeats >= 1)  # the fake ACKs; discord.py keeps the session
    [identify] = fake.identifies
    assert identify["token"] == fake.token and identify["intents"] == 1  # guilds only, nothing privileged
    commands = {c["name"]: c for c in fake.commands["global"]}
    assert set(commands) == {
        "imagine", "history", "balance", "models", "credits", "buy", "link", "Imagine from this image"
    }
    assert commands["Imagine from this image"]["type"] == 3  # a message context-menu command
    for command in commands.values():
        assert command["contexts"] == [0, 1] and command["integration_types"] == [0]  # servers and bot DMs
    options = {o["name"]: o for o in commands["imagine"]["options"]}
    assert options["prompt"]["required"] is True
    assert [c["value"] for c in options["aspect_ratio"]["choices"]][:3] == ["1:1", "16:9", "9:16"]
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    assert options["model"]["autocomplete"] is True
    assert {"seed", "negative"} <= set(options)
    assert [o["name"] for o in commands["credits"]["options"]] == ["grant", "revoke"]


async def test_guild_sync_when_guild_ids_are_configured(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    async with running_bot(runtime_factory, fake, discord_guild_ids=[fake.guild_id]):
        pass
    assert "global" not in fake.commands
    synced = {c["name"] for c in fake.commands[str(fake.guild_id)]}
    assert synced == {"imagine", "history", "balance", "models", "credits", "buy", "link", "Imagine from this image"}


async def test_a_guild_that_refuses_the_commands_fails_start_clearly(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    fake.fail_next("PUT", r"/applications/\d+/guilds/\d+/commands", 403, {"message": "Missing Access", "code": 50001})
    async with runtime_factory(discord_token=fake.token, discord_guild_ids=[fake.guild_id]) as runtime:
        frontend = DiscordFrontEnd(runtime.settings, runtime.service, runtime.accounts, guild_ready_timeout=0.01)
        with pytest.raises(RuntimeError, match=r"applications\.commands"):
            await frontend.start()


async def test_imagine_defers_at_once_then_edits_to_images_with_buttons(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        sent_at = time.monotonic()
        interaction = await fake.slash(
            "imagine", {"prompt": "a lighthouse at dusk --ar 16:9 --seed 7", "count": 2, "model": "offline"}, user=alice
        )
        message = await wait_for(finished(fake, interaction))
        assert await bot.balance(alice) == 18

    requests = fake.requests_for(interaction)
    deferral = requests[0]
    assert deferral.callback_type == DEFERRED_CHANNEL_MESSAGE and deferral.json.get("data") is None  # public
    assert deferral.at - sent_at < 0.5
    edits = [r.json["content"] for r in requests[1:] if r.method == "PATCH"]
    assert "Queued" in edits[0] and "Generating" in edits[1] and "<t:" in edits[1]  # live elapsed time
    assert [b["label"] for b in requests[1].json["components"][0]["components"]] == ["Cancel"]

    assert "a lighthouse at dusk" in message.content and "offline" in message.content
    assert "seeds 7, 8" in message.content  # the seeds that made the two images
    assert "--ar" not in message.content
    assert message.labels() == ["🔄", "V1", "V2", "✏️1", "✏️2", "🗑"]
    assert [a["filename"] for a in message.attachments] == ["image-1.png", "image-2.png"]
    for data in message.attachment_data():
        with Image.open(io.BytesIO(data)) as image:
            assert image.width > image.height  # 16:9
    assert len(message.custom_id("V2")) <= 100
    assert not message.loading and not message.ephemeral


async def test_pressing_v2_varies_image_2_and_charges_the_presser(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake) as bot:
        first = await fake.slash("imagine", {"prompt": "two red boats", "count": 2}, user=alice)
        result = await wait_for(finished(fake, first))
        press = await fake.press(result, result.custom_id("V2"), user=bob)
        variation = await wait_for(finished(fake, press))

        parent = await bot.runtime.service.generation(identity(alice), generation_id(result), str(fake.channel_id))
        [made] = await bot.generations(bob)
        assert made.kind == "variation" and made.parent_image_id == parent.images[1].id
        assert parent.images[1].index == 1
        assert await bot.balance(alice) == 18 and await bot.balance(bob) == 18  # bob paid for his press
    assert variation.id != result.id and variation.channel_id == fake.channel_id  # a new message, same channel
    assert f"<@{bob['id']}>" in variation.content
    assert fake.requests_for(press)[0].callback_type == DEFERRED_CHANNEL_MESSAGE


async def test_regenerate_by_someone_else_is_their_job(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake) as bot:
        result = await wait_for(finished(fake, await fake.slash("imagine", {"prompt": "a quiet harbour"}, user=alice)))
        again = await wait_for(finished(fake, await fake.press(result, result.custom_id("🔄"), user=bob)))
        [made] = await bot.generations(bob)
        assert made.kind == "regenerate" and made.prompt == "a quiet harbour"
        assert await bot.balance(bob) == 19 and await bot.balance(alice) == 19
    assert len(again.attachments) == 1


async def test_the_same_interaction_delivered_twice_charges_once(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        interaction = await fake.slash("imagine", {"prompt": "a windmill", "count": 3}, user=alice)
        await fake.redeliver(interaction)
        await wait_for(finished(fake, interaction))
        await asyncio.sleep(0.2)  # room for a second job, if there were going to be one
        assert len(await bot.generations(alice)) == 1
        assert await bot.balance(alice) == 17
    callbacks = [r for r in fake.requests_for(interaction) if r.path.endswith("/callback")]
    assert [r.status for r in callbacks] == [200, 400]  # Discord refused the second acknowledgement (40060)


async def test_oversized_images_are_reencoded_and_split_under_the_limit(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    limit = 20_000  # smaller than one offline PNG (about 25-30 kB)
    async with running_bot(runtime_factory, fake):
        interaction = await fake.slash(
            "imagine", {"prompt": "a big detailed city", "count": 2}, user=alice, upload_limit=limit
        )
        message = await wait_for(finished(fake, interaction))
        await wait_for(lambda: fake.followups(interaction))
    uploads = [r for r in fake.requests_for(interaction) if r.files]
    assert uploads and all(r.status == 200 and r.upload_bytes <= limit for r in uploads)
    delivered = [f for r in uploads for f in r.files]
    assert sorted(f.filename for f in delivered) == ["image-1.webp", "image-2.webp"]
    for upload in delivered:
        with Image.open(io.BytesIO(upload.data)) as image:
            assert image.format == "WEBP"
    assert "re-encoded" in message.content
    # Both images get their buttons on the first message.
    assert message.labels() == ["🔄", "V1", "V2", "✏️1", "✏️2", "🗑"]
    [continued] = fake.followups(interaction)
    assert "continued" in continued.content and len(continued.attachments) == 1


async def test_a_413_from_discord_shrinks_harder_instead_of_failing(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        interaction = await fake.slash("imagine", {"prompt": "a field of flowers"}, user=alice, upload_limit=26_000)
        # The channel turns out to allow less than the interaction said (e.g. boost level just dropped).
        too_large = {"message": "Request entity too large", "code": 40005}
        fake.fail_next("PATCH", r"/webhooks/.*", 413, too_large, uploads_only=True)
        message = await wait_for(finished(fake, interaction))
    assert len(message.attachments) == 1 and message.attachments[0]["size"] <= 13_000


async def test_an_upload_retried_after_a_server_error_sends_the_same_bytes(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    """discord.py rewinds each file and sends it again after a 5xx; the images go out as slices of the
    bytes the provider made (bot.adapters.discord.internals.ImageUpload), whole again on the retry."""
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        interaction = await fake.slash("imagine", {"prompt": "two moons --n 2"}, user=alice)
        fake.fail_next("PATCH", r"/webhooks/.*", 500, {"message": "oops", "code": 0}, uploads_only=True)
        message = await wait_for(finished(fake, interaction))
        page = await bot.runtime.service.history(identity(alice))
        stored = [f.data for f in await bot.runtime.service.load_files(page.items[0].images)]
    assert 500 in [r.status for r in fake.requests_for(interaction)]
    assert message.attachment_data() == stored


async def test_a_rate_limited_edit_is_retried(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    fake.rate_limit_next("PATCH", r"/webhooks/\d+/[^/]+/messages/\d+", retry_after=0.05)
    async with running_bot(runtime_factory, fake):
        interaction = await fake.slash("imagine", {"prompt": "a storm at sea"}, user=alice)
        await wait_for(finished(fake, interaction))
    assert 429 in [r.status for r in fake.requests_for(interaction)]


async def test_errors_the_user_caused_are_ephemeral_and_cost_nothing(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, starting_credits=3) as bot:
        # A typo in an inline flag: refused at once, privately, before anything public happens.
        typo = await fake.slash("imagine", {"prompt": "a cat --ratio 16:9"}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(typo))
        [refusal] = fake.requests_for(typo)
        assert refusal.callback_type == CHANNEL_MESSAGE and refusal.json["data"]["flags"] == EPHEMERAL
        assert "--ratio" in refusal.json["data"]["content"]

        # Not enough credits: the public "thinking…" message goes away, the reason is shown privately.
        broke = await fake.slash("imagine", {"prompt": "four cats", "count": 4}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(broke))
        assert fake.ephemeral_texts(broke) == ["This needs 4 credits and you have 3. Nothing was charged."]
        await wait_for(lambda: fake.original(broke).deleted)  # type: ignore[union-attr]

        # A model that doesn't exist.
        unknown = await fake.slash("imagine", {"prompt": "a dog", "model": "dall-e-9"}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(unknown))
        assert "no model called" in fake.ephemeral_texts(unknown)[0]
        assert await bot.balance(alice) == 3 and not await bot.generations(alice)
    for interaction in (typo, broke, unknown):
        assert not any("Traceback" in r.json.get("content", "") for r in fake.requests_for(interaction) if r.json)


async def test_a_failed_job_is_explained_privately_with_the_refund(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with fake_openai_server() as openai:
        openai.queue(moderation_blocked())
        async with running_bot(runtime_factory, fake, openai_api_key="sk-test", openai_base_url=openai.base_url) as bot:
            interaction = await fake.slash(
                "imagine", {"prompt": "something refused", "model": "gpt-image-1-mini"}, user=alice
            )
            await wait_for(lambda: fake.ephemeral_texts(interaction))
            assert await bot.balance(alice) == 20
    [text] = fake.ephemeral_texts(interaction)
    assert "couldn't be made" in text and "2 credits refunded" in text
    assert "moderation_blocked" not in text
    assert fake.original(interaction).deleted  # type: ignore[union-attr]


async def test_missing_attach_files_permission_is_explained(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        interaction = await fake.slash(
            "imagine", {"prompt": "a lighthouse"}, user=alice, app_permissions=GUILD_BOT_PERMISSIONS & ~ATTACH_FILES
        )
        await wait_for(lambda: fake.ephemeral_texts(interaction))
        assert not await bot.generations(alice)
    assert "Attach Files" in fake.ephemeral_texts(interaction)[0]
    [refusal] = fake.requests_for(interaction)  # refused before any deferral: nothing public, ever
    assert refusal.callback_type == CHANNEL_MESSAGE


async def test_cancel_is_owner_only_and_refunds(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake, start_worker=False) as bot:  # the job stays queued
        interaction = await fake.slash("imagine", {"prompt": "a slow painting", "count": 4}, user=alice)
        queued = await wait_for(lambda: (m := fake.original(interaction)) and "Queued" in m.content and m)
        assert queued.labels() == ["✖Cancel"]
        refused = await fake.press(queued, queued.custom_id("✖Cancel"), user=bob)
        await wait_for(lambda: fake.ephemeral_texts(refused))
        assert "Only the person who asked" in fake.ephemeral_texts(refused)[0]

        cancel = await fake.press(queued, queued.custom_id("✖Cancel"), user=alice)
        await wait_for(lambda: fake.ephemeral_texts(cancel))
        assert fake.ephemeral_texts(cancel) == ["Cancelled. 4 credits refunded."]
        await wait_for(lambda: "Cancelled" in fake.original(interaction).content)  # type: ignore[union-attr]
        assert await bot.balance(alice) == 20
    assert fake.original(interaction).components == []  # type: ignore[union-attr]


async def test_delete_is_owner_only(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake) as bot:
        result = await wait_for(finished(fake, await fake.slash("imagine", {"prompt": "a tiny house"}, user=alice)))
        refused = await fake.press(result, result.custom_id("🗑"), user=bob)
        await wait_for(lambda: fake.ephemeral_texts(refused))
        assert "Only the person who asked" in fake.ephemeral_texts(refused)[0] and not result.deleted

        await fake.press(result, result.custom_id("🗑"), user=alice)
        await wait_for(lambda: result.deleted)
        assert not await bot.generations(alice)  # gone from the history too


async def test_malformed_and_foreign_button_payloads_get_an_ephemeral_error(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice, mallory = fake.user("alice"), fake.user("mallory")
    other_channel = fake.snowflake()
    async with running_bot(runtime_factory, fake) as bot:
        result = await wait_for(finished(fake, await fake.slash("imagine", {"prompt": "a secret garden"}, user=alice)))
        # Messages such as an older bot version (or a forger) might have left around in another channel.
        planted = fake.plant_message(
            other_channel,
            [
                {"type": 2, "style": 2, "label": "old", "custom_id": "img:zz:whatever"},
                {"type": 2, "style": 2, "label": "foreign", "custom_id": result.custom_id("🔄")},
                {"type": 2, "style": 2, "label": "missing", "custom_id": "img:v:AAAAAAAAAAAA"},
            ],
        )
        answers = []
        for label in ("old", "foreign", "missing"):
            press = await fake.press(planted, planted.custom_id(label), user=mallory)
            answers.append(await wait_for(lambda press=press: fake.ephemeral_texts(press)))
        assert await bot.balance(mallory) == 20 and not await bot.generations(mallory)
    assert answers[0] == ["That button doesn't work any more. Try /imagine again."]
    assert answers[1] == ["That generation doesn't exist or isn't available to you."]
    assert answers[2] == ["That image doesn't exist or isn't available to you."]
    assert not any("secret garden" in text for texts in answers for text in texts)


async def test_model_autocomplete_shows_the_cost(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        interaction = await fake.autocomplete("imagine", "model", "off", user=alice)
        await wait_for(lambda: interaction.choices is not None)
    assert interaction.choices == [{"name": "Offline demo (not AI) — 1 credit per image", "value": "offline"}]


async def test_while_stopping_new_work_is_refused_politely(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        await bot.frontend.stop_taking_work()
        interaction = await fake.slash("imagine", {"prompt": "a lighthouse"}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(interaction))
        assert "restarting" in fake.ephemeral_texts(interaction)[0]
        assert not await bot.generations(alice)


async def test_a_wrong_token_fails_start_clearly(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    async with runtime_factory(discord_token="not-the-token") as runtime:
        frontend = DiscordFrontEnd(runtime.settings, runtime.service, runtime.accounts, guild_ready_timeout=0.01)
        with pytest.raises(RuntimeError, match="rejected DISCORD_TOKEN"):
            await frontend.start()
        await frontend.close()
