"""Edits and remixes on Discord, through the real discord.py against the fake Discord: the /imagine
attachment options, the "Imagine from this image" message command and its modal, the ✏️ Remix modal, and
each bad picture refused privately. The offline model returns the picture it was given, fitted, with the
prompt in a band, so the result shows which picture went in."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.core import ScriptedProvider, scripted_model
from tests.fakes.discord_harness import finished, identity, running_bot, serving_fake
from tests.fakes.discord_server import CHANNEL_MESSAGE, EPHEMERAL, MODAL, FakeDiscord, FakeMessage

GREEN = (0, 200, 0)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


def picture(colour: tuple[int, int, int] = GREEN, size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def centre(message: FakeMessage) -> tuple[int, ...]:
    with Image.open(io.BytesIO(message.attachment_data()[0])) as image:
        return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


async def test_imagine_with_an_image_option_is_an_edit_of_it(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        interaction = await fake.slash(
            "imagine", {"prompt": "make it snowy", "image": fake.attachment(picture(), "holiday.png")}, user=alice
        )
        message = await wait_for(finished(fake, interaction))
        assert await bot.balance(alice) == 19
        [item] = (await bot.runtime.service.history(identity(alice))).items
    assert centre(message) == GREEN
    assert len(fake.downloads) == 1
    assert [(i.width, i.height) for i in item.inputs] == [(320, 240)]
    options = {o["name"]: o for o in next(c for c in fake.commands["global"] if c["name"] == "imagine")["options"]}
    assert [options[n]["type"] for n in ("image", "image2", "image3")] == [11, 11, 11]
    assert not any(options[n]["required"] for n in ("image", "image2", "image3") if "required" in options[n])


async def test_bad_pictures_are_refused_privately_and_change_nothing(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    one_only = scripted_model(max_input_images=1)
    async with running_bot(
        runtime_factory, fake, extra_providers={"scripted": ScriptedProvider()}, models=(one_only,)
    ) as bot:
        too_many = await fake.slash(
            "imagine", {"prompt": "both", "image": fake.attachment(picture()), "image2": fake.attachment(picture())},
            user=alice,
        )
        await wait_for(lambda: fake.ephemeral_texts(too_many))
        [refusal] = fake.requests_for(too_many)
        assert refusal.callback_type == CHANNEL_MESSAGE and refusal.json["data"]["flags"] == EPHEMERAL
        assert "takes at most 1 picture; you sent 2" in refusal.json["data"]["content"]

        oversized = fake.attachment(picture(), declared_size=30 * 1024 * 1024)
        huge = await fake.slash("imagine", {"prompt": "make it snowy", "image": oversized}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(huge))
        assert "limit is 20.0 MB" in fake.ephemeral_texts(huge)[0]
        assert fake.downloads == []  # neither was fetched

        notes = fake.attachment(b"hello", "notes.txt", "text/plain")
        text = await fake.slash("imagine", {"prompt": "make it snowy", "image": notes}, user=alice)
        await wait_for(lambda: fake.ephemeral_texts(text))
        assert "isn't a picture" in fake.ephemeral_texts(text)[0]
        assert await bot.balance(alice) == 20 and not await bot.generations(alice)


async def test_imagine_from_this_image_opens_a_modal_whose_prompt_edits_the_picture(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    posted = fake.user_message(alice, [fake.attachment(picture((200, 0, 0)), "cat.png")], "my cat")
    async with running_bot(runtime_factory, fake):
        menu = await fake.message_command("Imagine from this image", posted, user=bob)
        await wait_for(lambda: menu.modal is not None)
        assert menu.response_type == MODAL and menu.modal is not None
        assert menu.modal["title"] == "Imagine from this image" and len(menu.modal["custom_id"]) <= 100
        assert fake.downloads == []
    # Submitted after a restart: the pictures wait in Postgres.
    async with running_bot(runtime_factory, fake) as bot:
        submitted = await fake.submit_modal(menu, {"prompt": "the same cat, in space"})
        message = await wait_for(finished(fake, submitted))
        assert await bot.balance(bob) == 19
        [job] = await bot.generations(bob)
    assert job.prompt == "the same cat, in space"
    assert centre(message) == (200, 0, 0)

    no_picture = fake.user_message(alice, [], "just words")
    async with running_bot(runtime_factory, fake):
        menu = await fake.message_command("Imagine from this image", no_picture, user=bob)
        await wait_for(lambda: fake.ephemeral_texts(menu))
    assert "no picture" in fake.ephemeral_texts(menu)[0]


async def test_remix_opens_a_prefilled_modal_and_makes_a_new_generation_from_that_image(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake) as bot:
        first = await fake.slash("imagine", {"prompt": "a red fox", "count": 2}, user=alice)
        result = await wait_for(finished(fake, first))
        custom_id = result.custom_id("✏️2")
        assert len(custom_id) <= 100
        press = await fake.press(result, custom_id, user=bob)
        await wait_for(lambda: press.modal is not None)
        assert press.modal is not None and press.response_type == MODAL
        [[field]] = [row["components"] for row in press.modal["components"]]
        assert field["value"] == "a red fox" and field["style"] == 2
        submitted = await fake.submit_modal(press, {"prompt": "a red fox in the snow"})
        remixed = await wait_for(finished(fake, submitted))
        jobs = await bot.generations(bob)
        assert await bot.balance(bob) == 18  # charged like any request: 2 images
    [remix] = jobs
    second_image = result.custom_id("V2").rsplit(":", 1)[1]
    assert remix.kind == "remix" and remix.parent_image_id == second_image
    assert remix.prompt == "a red fox in the snow" and "a red fox in the snow" in remixed.content

