"""Edits and remixes in the core, on a real Postgres and store: what is recorded, sent, charged, refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.core.catalogue import DEFAULT_MODELS
from bot.core.errors import BotError, InvalidRequest
from bot.core.input_images import UploadedImage
from bot.core.models import Destination, ImagineRequest, UserIdentity
from bot.core.providers.base import InputImage, ProviderCall
from bot.core.providers.offline import OfflineProvider
from tests.conftest import USER_BALANCE, wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model
from tests.plugins.s3 import make_store
from tests.test_storage_jobs import s3_settings

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
HERE = Destination("test", "chat-1")


def photo(colour: tuple[int, int, int] = (0, 120, 255), size: tuple[int, int] = (64, 48)) -> bytes:
    image = Image.new("RGB", size, colour)
    exif = Image.Exif()
    exif[0x8825] = {2: (48.0, 51.0, 29.0)}  # a location, which must never leave the bot
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_an_edit_is_recorded_sent_stripped_and_shown_in_history(runtime_factory, pool, tmp_path) -> None:
    provider = ScriptedProvider()
    observer = RecordingObserver()
    model = scripted_model(max_input_images=2)
    async with runtime_factory({"scripted": provider}, models=(model,)) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(
            ALICE, ImagineRequest("make it snowy"), HERE,
            inputs=[UploadedImage(photo(), "a.jpg"), UploadedImage(photo((250, 0, 0)), "b.jpg")],
        )
        await wait_for(lambda: observer.done.get(accepted.generation.id))
        page = await rt.service.history(ALICE)
        inputs_dir = rt.settings.local_images_dir / "inputs"
    [call] = provider.calls
    assert len(call.input_images) == 2 and call.prompt == "make it snowy"
    assert all(b"Exif" not in i.data and i.mime_type == "image/jpeg" for i in call.input_images)
    rows = await pool.fetch("SELECT * FROM image.input_images ORDER BY index")
    assert [r["generation_id"] for r in rows] == [accepted.generation.id] * 2
    assert [(r["width"], r["height"], r["mime_type"]) for r in rows] == [(64, 48, "image/jpeg")] * 2
    assert all(r["storage_key"] == f"inputs/{r['sha256']}.jpg" for r in rows)
    assert sorted(p.name for p in inputs_dir.iterdir()) == sorted(f"{r['sha256']}.jpg" for r in rows)
    [item] = page.items
    assert [i.sha256 for i in item.inputs] == [r["sha256"] for r in rows]
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'alice'") == 20 - 1


@pytest.mark.parametrize(
    ("uploads", "message"),
    [
        ([UploadedImage(b"", "empty.png")], "empty"),
        ([UploadedImage(b"hello", "notes.txt")], "isn't a picture"),
        ([UploadedImage(photo())] * 3, "takes at most 2 pictures"),
    ],
)
async def test_a_bad_picture_changes_nothing(runtime_factory, pool, uploads, message) -> None:
    async with runtime_factory({"scripted": ScriptedProvider()}, models=(scripted_model(max_input_images=2),)) as rt:
        with pytest.raises(InvalidRequest, match=message):
            await rt.service.imagine(ALICE, ImagineRequest("make it snowy"), HERE, inputs=uploads)
        stored = stored_files(rt.settings.local_images_dir) if rt.settings.local_images_dir.exists() else []
    assert stored == []
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
    assert await pool.fetchval("SELECT count(*) FROM image.credit_ledger WHERE reason = 'reserve'") == 0


async def test_a_refused_request_keeps_no_picture(runtime_factory, pool) -> None:
    """Checked and stored, then refused for want of credits: the stored file goes again."""
    async with runtime_factory({"scripted": ScriptedProvider()}, models=(scripted_model(cost=50),)) as rt:
        with pytest.raises(Exception, match="credits"):
            await rt.service.imagine(ALICE, ImagineRequest("make it snowy"), HERE, inputs=[UploadedImage(photo())])
        inputs_dir = rt.settings.local_images_dir / "inputs"
        assert not inputs_dir.exists() or list(inputs_dir.iterdir()) == []
    assert await pool.fetchval("SELECT count(*) FROM image.input_images") == 0


async def test_a_model_without_picture_input_is_not_offered_for_an_edit(runtime_factory) -> None:
    words = scripted_model(name="words").model_copy(update={"supports_input_image": False})
    pictures = scripted_model(name="pictures")
    async with runtime_factory({"scripted": ScriptedProvider()}, models=(words, pictures)) as rt:
        with pytest.raises(InvalidRequest, match=r"words can't start from a picture\. Models that can: pictures\."):
            await rt.service.imagine(ALICE, ImagineRequest("snowy", model="words"), HERE,
                                     inputs=[UploadedImage(photo())])


async def test_remix_regenerate_and_vary_of_an_edit_survive_a_restart(runtime_factory, pool) -> None:
    provider = ScriptedProvider()
    model = scripted_model(cost=1)
    async with runtime_factory({"scripted": provider}, models=(model,)) as rt:
        observer = RecordingObserver()
        rt.register(observer)
        await rt.start()
        edit = await rt.service.imagine(ALICE, ImagineRequest("snowy", count=2), HERE,
                                        inputs=[UploadedImage(photo())])
        await wait_for(lambda: observer.done.get(edit.generation.id))
        result = observer.images[edit.generation.id][1]
    # A new process: nothing in memory, everything from Postgres and the store.
    async with runtime_factory({"scripted": provider}, models=(model,)) as rt:
        observer = RecordingObserver()
        rt.register(observer)
        await rt.start()
        source = await rt.service.remix_source(BOB, result.record.id, HERE.chat_id)
        assert source.prompt == "snowy"
        remix = await rt.service.remix(BOB, result.record.id, "the same, at night", HERE)
        again = await rt.service.regenerate(ALICE, edit.generation.id, HERE)
        varied = await rt.service.vary(ALICE, result.record.id, HERE)
        await wait_for(lambda: all(a.generation.id in observer.done for a in (remix, again, varied)))
    assert remix.generation.kind == "remix" and remix.generation.parent_image_id == result.record.id
    assert remix.generation.prompt == "the same, at night" and remix.generation.count == 2
    by_prompt = {c.prompt: c for c in provider.calls[1:]}
    assert [i.data for i in by_prompt["the same, at night"].input_images] == [result.data]
    first_input = provider.calls[0].input_images
    regenerated = [c for c in provider.calls[1:] if c.prompt == "snowy" and c.input_images == first_input]
    assert regenerated, "a regenerated edit starts from the same picture"
    assert await pool.fetchval("SELECT count(*) FROM image.input_images") == 2
    assert await pool.fetchval(f"{USER_BALANCE} WHERE platform_user_id = 'bob'") == 20 - 2


async def test_remix_refuses_an_empty_prompt_and_charges_nothing(runtime_factory, pool) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        await rt.start()
        first = await rt.service.imagine(ALICE, ImagineRequest("a fox"), HERE)
        await wait_for(lambda: observer.done.get(first.generation.id))
        image = observer.images[first.generation.id][0].record
        with pytest.raises(InvalidRequest):
            await rt.service.remix(ALICE, image.id, "  ", HERE)
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 1


async def test_the_offline_model_returns_the_picture_fitted_with_the_prompt_in_a_band() -> None:
    offline = next(m for m in DEFAULT_MODELS if m.name == "offline")
    source = Image.new("RGB", (300, 100), (0, 200, 0))
    out = io.BytesIO()
    source.save(out, format="PNG")
    call = ProviderCall(offline, "make it snowy", None, 1, "9:16", 432, 768, 5,
                        (InputImage(out.getvalue(), "image/png"),), "x")
    [made] = await OfflineProvider().generate(call, None)
    with Image.open(io.BytesIO(made.data)) as image:
        assert image.size == (432, 768)
        assert image.getpixel((216, 384)) == (0, 200, 0)  # the picture fills the frame, no shapes on it
        band = image.getpixel((2, 760))
        assert band[1] < 200  # darkened by the prompt's band


async def test_an_edit_keeps_its_picture_in_s3_under_its_own_prefix(
    runtime_factory, pool, s3_server, s3_bucket
) -> None:
    provider = ScriptedProvider()
    observer = RecordingObserver()
    settings = s3_settings(s3_server, s3_bucket)
    async with runtime_factory({"scripted": provider}, models=(scripted_model(),), **settings) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("snowy"), HERE, inputs=[UploadedImage(photo())])
        await wait_for(lambda: observer.done.get(accepted.generation.id))
    [row] = await pool.fetch("SELECT * FROM image.input_images")
    store = make_store(s3_server, s3_bucket)
    try:
        kept = await store.get(row["storage_key"])
    finally:
        await store.aclose()
    assert row["storage_key"].startswith("inputs/")
    assert store.object_key(row["storage_key"]).startswith("images/inputs/")
    assert kept == provider.calls[0].input_images[0].data and len(kept) == row["bytes"]


async def test_a_picture_the_store_cannot_keep_is_refused_uncharged(runtime_factory, pool, s3_server) -> None:
    async with runtime_factory(
        {"scripted": ScriptedProvider()}, models=(scripted_model(),), **s3_settings(s3_server, "no-such-bucket")
    ) as rt:
        with pytest.raises(BotError, match="couldn't be saved"):
            await rt.service.imagine(ALICE, ImagineRequest("snowy"), HERE, inputs=[UploadedImage(photo())])
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
    assert await pool.fetchval("SELECT count(*) FROM image.credit_ledger WHERE reason = 'reserve'") == 0


async def test_remixing_an_image_of_a_model_without_picture_input_is_refused_before_asking(
    runtime_factory, pool
) -> None:
    words = scripted_model(name="words").model_copy(update={"supports_input_image": False})
    observer = RecordingObserver()
    async with runtime_factory({"scripted": ScriptedProvider()}, models=(words, scripted_model(name="pictures"))) as rt:
        rt.register(observer)
        await rt.start()
        first = await rt.service.imagine(ALICE, ImagineRequest("a fox", model="words"), HERE)
        await wait_for(lambda: observer.done.get(first.generation.id))
        image = observer.images[first.generation.id][0].record
        with pytest.raises(InvalidRequest, match="Models that can: pictures"):
            await rt.service.remix_source(ALICE, image.id, HERE.chat_id)
        with pytest.raises(InvalidRequest, match="Models that can: pictures"):
            await rt.service.remix(ALICE, image.id, "a fox at night", HERE)
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 1
