"""/history: delivered in a DM with working ◀ ▶ paging and buttons; closed DMs handled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.core.metrics import PLATFORM_ERRORS
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import finished, running_bot, serving_fake
from tests.fakes.discord_server import DEFERRED_CHANNEL_MESSAGE, EPHEMERAL, FakeDiscord, FakeMessage


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def make_three(fake: FakeDiscord, user: dict[str, str]) -> None:
    for prompt, count in (("the first boat", 1), ("the second boat", 2), ("the third boat", 1)):
        await wait_for(finished(fake, await fake.slash("imagine", {"prompt": prompt, "count": count}, user=user)))


async def turn_page(fake: FakeDiscord, page: FakeMessage, arrow: str, user: dict[str, str], expect: str) -> None:
    before = page.edits
    await fake.press(page, page.custom_id(arrow), user=user)
    await wait_for(lambda: page.edits > before and expect in page.content)


async def test_history_lands_in_a_dm_and_pages_with_working_buttons(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake) as bot:
        await make_three(fake, alice)
        asked = await fake.slash("history", user=alice)
        await wait_for(lambda: fake.ephemeral_texts(asked))
        dm = fake.dm_channel_id(alice)
        [page] = fake.channel_messages(dm)
        assert fake.ephemeral_texts(asked)[0].startswith("I sent your history to your DMs")
        assert fake.requests_for(asked)[0].json == {"type": DEFERRED_CHANNEL_MESSAGE, "data": {"flags": EPHEMERAL}}

        assert "the third boat" in page.content and "1 of 3" in page.content and "seed" in page.content
        assert page.labels() == ["🔄", "V1", "◀", "1 / 3", "▶"]
        assert page.button("◀")["disabled"] and not page.button("▶")["disabled"]
        assert len(page.attachments) == 1

        await turn_page(fake, page, "▶", alice, "2 of 3")
        assert "the second boat" in page.content and len(page.attachments) == 2
        assert page.labels() == ["🔄", "V1", "V2", "◀", "2 / 3", "▶"]
        await turn_page(fake, page, "▶", alice, "3 of 3")
        assert "the first boat" in page.content and page.button("▶")["disabled"]
        await turn_page(fake, page, "◀", alice, "2 of 3")

        # The buttons of an old item work from the DM, and the new images arrive there.
        press = await fake.press(page, page.custom_id("V2"), user=alice)
        varied = await wait_for(finished(fake, press))
        assert varied.channel_id == dm and len(varied.attachments) == 2
        assert await bot.balance(alice) == 20 - 4 - 2


async def test_closed_dms_are_explained_and_the_first_page_is_shown_privately(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    fake.closed_dms.add(int(alice["id"]))
    refused = PLATFORM_ERRORS.labels("discord", "http_403")
    before = refused._value.get()
    async with running_bot(runtime_factory, fake):
        await make_three(fake, alice)
        asked = await fake.slash("history", user=alice)
        await wait_for(lambda: fake.ephemeral_texts(asked))
        page = fake.original(asked)
        assert page is not None and page.ephemeral and page.channel_id == fake.channel_id
        assert "DMs are closed" in page.content and "the third boat" in page.content
        assert page.labels() == ["🔄", "V1", "◀", "1 / 3", "▶"] and len(page.attachments) == 1
        dm_attempts = [r for r in fake.requests if r.path == f"/channels/{fake.dm_channel_id(alice)}/messages"]
        assert [r.status for r in dm_attempts] == [403]  # 50007, as Discord answers
        assert refused._value.get() == before + 1  # counted for the operator's metrics

        await turn_page(fake, page, "▶", alice, "2 of 3")
        assert "the second boat" in page.content and page.ephemeral


async def test_history_in_a_dm_and_an_empty_history(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake):
        empty = await fake.slash("history", user=bob)
        await wait_for(lambda: fake.ephemeral_texts(empty))
        assert "no generations yet" in fake.ephemeral_texts(empty)[0]

        await wait_for(finished(fake, await fake.slash("imagine", {"prompt": "a DM picture"}, user=alice, dm=True)))
        in_dm = await fake.slash("history", user=alice, dm=True)
        page = await wait_for(lambda: (m := fake.original(in_dm)) and not m.loading and m)
        assert not page.ephemeral and "a DM picture" in page.content and len(page.attachments) == 1
        assert page.channel_id == fake.dm_channel_id(alice)
