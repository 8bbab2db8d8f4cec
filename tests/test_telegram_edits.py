"""Edits and remixes on Telegram, end to end: the real python-telegram-bot against the fake Bot API (photos
in updates, getFile, file downloads, albums, ForceReply), the real core on a test database, the offline
model (which returns the picture it was given, fitted, with the prompt in a band)."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import pytest
from PIL import Image

from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.core import ScriptedProvider, scripted_model
from tests.fakes.telegram_harness import RuntimeFactory, running_bot
from tests.fakes.telegram_server import BOT_USERNAME, ApiCall, FakeTelegram, fake_telegram_server
from tests.test_input_images import png_declaring

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

ANN, BOB = 1001, 1002
GREEN = (0, 200, 0)


@pytest.fixture
async def fake() -> Any:
    async with fake_telegram_server() as server:
        yield server


def picture(colour: tuple[int, int, int] = GREEN, size: tuple[int, int] = (320, 240), format: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=format)
    return out.getvalue()


def animated() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def is_result(call: ApiCall) -> bool:
    return any(data.startswith("r:") for data in call.callback_data())


def centre_colour(call: ApiCall, fake: FakeTelegram) -> tuple[int, ...]:
    data = call.files["photo"].data if "photo" in call.files else fake.files[call.params["photo"]]
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def near(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    """JPEG moves a colour by a step or two."""
    return all(abs(a - b) <= 4 for a, b in zip(colour, expected, strict=True))


async def generations(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM image.generations ORDER BY created_at")


async def balance_of(pool: asyncpg.Pool, user_id: int) -> int:
    return await pool.fetchval(
        f"{USER_BALANCE} WHERE platform = 'telegram' AND platform_user_id = $1", str(user_id)
    )


async def test_a_photo_captioned_imagine_is_an_edit_of_it(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    group = fake.group()
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, picture(), f"/imagine@{BOT_USERNAME} make it snowy --ar 16:9", group)
        [photo] = await fake.wait_sent("sendPhoto", group["id"])
    assert near(centre_colour(photo, fake), GREEN)
    assert "make it snowy" in photo.params["caption"]
    assert len(fake.downloads) == 1
    [row] = await pool.fetch("SELECT * FROM image.input_images")
    assert (row["width"], row["height"]) == (320, 240)
    assert await balance_of(pool, ANN) == 19


async def test_an_image_sent_as_a_file_in_a_private_chat_with_a_plain_caption_is_an_edit(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, picture(format="PNG"), "make it snowy", document=("mine.png", "image/png"))
        [photo] = await fake.wait_sent("sendPhoto", ANN)
    assert near(centre_colour(photo, fake), GREEN)
    assert await pool.fetchval("SELECT count(*) FROM image.input_images") == 1


async def test_a_reply_to_a_photo_with_imagine_is_an_edit_of_that_photo(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann, bob = fake.user(ANN, "Ann"), fake.user(BOB, "Bob")
    group = fake.group()
    async with running_bot(runtime_factory, fake):
        shared = fake.send_photo(ann, picture((200, 0, 0)), "look at this", group)  # not for the bot
        fake.send(bob, "/imagine the same, at night", group, reply_to=shared["message"])
        [photo] = await fake.wait_sent("sendPhoto", group["id"])
    assert near(centre_colour(photo, fake), (200, 0, 0))
    [job] = await generations(pool)
    assert job["prompt"] == "the same, at night"
    assert await balance_of(pool, BOB) == 19


async def test_a_photo_without_caption_gets_a_question_whose_reply_is_the_prompt(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, picture())
        [question] = await fake.wait_sent("sendMessage", ANN)
        assert question.params["reply_markup"]["force_reply"] is True
        assert "What should I do with this picture?" in question.params["text"]
        assert fake.downloads == []  # nothing fetched until there is a prompt
    # A restart between the question and the answer: the question is in Postgres.
    async with running_bot(runtime_factory, fake):
        fake.send(ann, "make it snowy", reply_to=question.result)
        [photo] = await fake.wait_sent("sendPhoto", ANN)
    assert near(centre_colour(photo, fake), GREEN)
    [job] = await generations(pool)
    assert job["prompt"] == "make it snowy"


async def test_an_album_with_a_caption_gives_several_inputs(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, picture((200, 0, 0)), "/imagine both together", media_group_id="album-1")
        fake.send_photo(ann, picture((0, 0, 200)), media_group_id="album-1")
        [photo] = await fake.wait_sent("sendPhoto", ANN)
    rows = await pool.fetch("SELECT * FROM image.input_images ORDER BY index")
    assert len(rows) == 2 and len({r["sha256"] for r in rows}) == 2
    data = photo.files["photo"].data
    with Image.open(io.BytesIO(data)) as image:
        left, right = image.getpixel((image.width // 4, 100)), image.getpixel((image.width * 3 // 4, 100))
    assert near(left, (200, 0, 0)) and near(right, (0, 0, 200))
    assert len(await generations(pool)) == 1


async def test_an_album_larger_than_the_model_takes_is_refused_before_downloading(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    model = scripted_model(max_input_images=1)
    async with running_bot(runtime_factory, fake, extra_providers={"scripted": ScriptedProvider()}, models=(model,)):
        fake.send_photo(ann, picture(), "/imagine both", media_group_id="g")
        fake.send_photo(ann, picture(), media_group_id="g")
        [refusal] = await fake.wait_sent("sendMessage", ANN)
    assert "takes at most 1 picture; you sent 2" in refusal.params["text"]
    assert fake.downloads == [] and await generations(pool) == []


@pytest.mark.parametrize(
    ("send", "words"),
    [
        (dict(data=picture(), declared_size=25 * 1024 * 1024), "up to 20 MB, and that one is 25.0 MB"),
        (dict(data=b"%PDF-1.4 not a picture", document=("cv.pdf", "application/pdf")), "isn't a picture"),
        (dict(data=b"", document=("empty.png", "image/png")), "empty"),
        (dict(data=picture()[:200], document=("cut.jpg", "image/jpeg")), "damaged"),
        (dict(data=animated(), document=("dance.gif", "image/gif")), "animated"),
        (dict(data=png_declaring(20_000, 20_000), document=("bomb.png", "image/png")), "too big"),
    ],
)
async def test_a_bad_picture_gets_a_short_answer_and_changes_nothing(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool, send: dict[str, Any], words: str
) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, caption="/imagine make it snowy", **send)
        [answer] = await fake.wait_sent("sendMessage", ANN)
    assert words in answer.params["text"]
    assert await generations(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM image.input_images") == 0
    assert await balance_of(pool, ANN) in (None, 20)


async def test_remix_asks_with_force_reply_and_the_reply_remixes_that_image(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann, bob = fake.user(ANN, "Ann"), fake.user(BOB, "Bob")
    group = fake.group()
    async with running_bot(runtime_factory, fake):
        fake.send(ann, "/imagine a red fox", group)
        [result] = await fake.wait_sent("sendPhoto", group["id"], where=is_result)
        remix = next(d for d in result.callback_data() if d.startswith("e:"))
        fake.press(bob, result.result, remix)
        [question] = await fake.wait_sent(
            "sendMessage", group["id"], where=lambda c: "force_reply" in (c.params.get("reply_markup") or {})
        )
    assert "a red fox" in question.params["text"]
    # After a restart, Bob's reply still finds what it answers.
    async with running_bot(runtime_factory, fake):
        fake.send(bob, "a red fox in the snow", group, reply_to=question.result)
        await fake.wait_sent("sendPhoto", group["id"], count=2)
    first, remixed = await generations(pool)
    image_id = await pool.fetchval("SELECT id FROM image.images WHERE generation_id = $1", first["id"])
    assert remixed["kind"] == "remix" and remixed["parent_image_id"] == image_id
    assert remixed["prompt"] == "a red fox in the snow"
    assert await balance_of(pool, BOB) == 19
    await wait_for(lambda: len(fake.sent("sendPhoto", group["id"])) == 2)


async def test_pictures_not_meant_for_the_bot_are_left_alone(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    group = fake.group()
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, picture(), "our holiday", group)
        fake.send_photo(ann, picture(), "/imagine@OtherBot make it snowy", group)
        fake.send_photo(ann, picture(), None, group)
        fake.send(ann, "/models", group)  # a marker: once it is answered, the pictures were seen
        await fake.wait_sent("sendMessage", group["id"])
    assert fake.downloads == [] and await generations(pool) == []
    assert len(fake.sent("sendMessage", group["id"])) == 1


async def test_in_a_private_chat_a_plain_reply_to_a_photo_is_an_edit_of_it(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    async with running_bot(runtime_factory, fake):
        shared = fake.send_photo(ann, picture((200, 0, 0)), "our holiday")
        await fake.wait_sent("sendPhoto", ANN)  # its caption was a prompt too: an edit
        fake.send(ann, "the same, at night", reply_to=shared["message"])
        await fake.wait_sent("sendPhoto", ANN, count=2)
    prompts = [job["prompt"] for job in await generations(pool)]
    assert prompts == ["our holiday", "the same, at night"]
    assert await pool.fetchval("SELECT count(*) FROM image.input_images") == 2


async def test_a_cmyk_photo_is_converted_and_edited(
    runtime_factory: RuntimeFactory, fake: FakeTelegram, pool: asyncpg.Pool
) -> None:
    ann = fake.user(ANN, "Ann")
    out = io.BytesIO()
    Image.new("CMYK", (200, 150), (0, 255, 255, 0)).save(out, format="JPEG")  # red, as printers say it
    async with running_bot(runtime_factory, fake):
        fake.send_photo(ann, out.getvalue(), "/imagine make it snowy", document=("print.jpg", "image/jpeg"))
        [photo] = await fake.wait_sent("sendPhoto", ANN)
    red, green, blue = centre_colour(photo, fake)
    assert red > 200 and green < 60 and blue < 60
    assert await pool.fetchval("SELECT mime_type FROM image.input_images") == "image/jpeg"
