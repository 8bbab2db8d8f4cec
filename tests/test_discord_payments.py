"""Discord purchases through the real discord.py against the fake Discord: /buy's premium buttons,
entitlements credited and consumed once (also those bought while the bot was down), a deleted one taken
back; /link with shared balance and history across platforms, bad and reused codes."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import RunningBot, running_bot, serving_fake
from tests.fakes.discord_server import FakeDiscord

SMALL_SKU, BIG_SKU, OTHER_SKU = "1300000000000000001", "1300000000000000002", "1300000000000000999"
PACKS = (
    f'[{{"name": "small", "credits": 50, "stars": 25, "discord_sku_id": "{SMALL_SKU}"}},'
    f' {{"name": "big", "credits": 300, "discord_sku_id": {BIG_SKU}}},'
    ' {"name": "stars-only", "credits": 10, "stars": 5}]'
)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def test_buy_shows_premium_buttons_privately(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS):
        asked = await fake.slash("buy", user=alice)
        message = await wait_for(lambda: fake.original(asked))
    assert message.ephemeral
    assert [(b["style"], b["sku_id"]) for b in message.buttons()] == [(6, SMALL_SKU), (6, BIG_SKU)]
    assert all("custom_id" not in b for b in message.buttons())
    assert "**small**: 50 credits" in message.content and "stars-only" not in message.content
    commands = {command["name"]: command for command in fake.commands["global"]}
    [code] = commands["link"]["options"]
    assert (code["name"], code["type"], code.get("required", False)) == ("code", 3, False)
    assert "options" not in commands["buy"] or not commands["buy"]["options"]


async def test_a_purchase_is_credited_and_consumed_once(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS) as bot:
        entitlement = fake.entitle(alice, SMALL_SKU)
        await fake.entitlement_event("ENTITLEMENT_CREATE", entitlement)
        await fake.entitlement_event("ENTITLEMENT_CREATE", entitlement)  # delivered again
        await wait_for(lambda: fake.consumed)
        await wait_for(lambda: len([r for r in fake.requests if r.path.endswith("/consume")]) == 2)
        assert await bot.balance(alice) == 70
        purchases = await bot.runtime.pool.fetch("SELECT platform, charge_id, credits FROM image.purchases")
    assert fake.consumed == [entitlement["id"]]
    assert [tuple(r) for r in purchases] == [("discord", entitlement["id"], 50)]


async def test_purchases_made_while_down_are_settled_at_start_up(
    runtime_factory: RuntimeFactory, fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = fake.user("alice"), fake.user("bob")
    missed = fake.entitle(alice, BIG_SKU)
    already = fake.entitle(bob, SMALL_SKU)
    already["consumed"] = True  # settled before the restart
    other = fake.entitle(bob, OTHER_SKU)  # not a pack's SKU: not ours to consume
    caplog.set_level(logging.INFO)
    async with running_bot(runtime_factory, fake, credit_packs=PACKS) as bot:
        assert await bot.balance(alice) == 320 and await bot.balance(bob) == 20
    assert fake.consumed == [missed["id"]]
    assert not other["consumed"]
    listed = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/entitlements")]
    assert listed and set(listed[0].query["sku_ids"].split(",")) == {SMALL_SKU, BIG_SKU}
    assert "settled 1 purchases made while the bot was away" in caplog.text


async def test_a_deleted_entitlement_takes_back_what_is_left(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake, credit_packs=PACKS, starting_credits=0) as bot:
        entitlement = fake.entitle(alice, SMALL_SKU)
        await fake.entitlement_event("ENTITLEMENT_CREATE", entitlement)
        await wait_for(lambda: fake.consumed)
        await wait_for(lambda: _balance_is(bot, alice, 50))
        who = UserIdentity("discord", alice["id"])
        await bot.runtime.service.imagine(who, ImagineRequest("four foxes", count=4), Destination("test", "x"))
        await fake.entitlement_event("ENTITLEMENT_DELETE", entitlement)
        await wait_for(lambda: _balance_is(bot, alice, 0))
        row = await bot.runtime.pool.fetchrow("SELECT taken_back, shortfall, refunded_at FROM image.purchases")
    assert (row["taken_back"], row["shortfall"]) == (46, 4) and row["refunded_at"] is not None


async def _balance_is(bot: RunningBot, user: dict[str, Any], expected: int) -> bool:
    return await bot.balance(user) == expected


async def test_link_shares_balance_and_history_with_telegram(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    telegram = UserIdentity("telegram", "4242", "Alice on Telegram")
    async with running_bot(runtime_factory, fake) as bot:
        service, accounts = bot.runtime.service, bot.runtime.accounts
        made_on_telegram = await service.imagine(telegram, ImagineRequest("a telegram heron"), Destination("test", "t"))
        asked = await fake.slash("link", user=alice)
        [text] = await wait_for(lambda: fake.ephemeral_texts(asked))
        code = re.search(r"Your link code: (\S+)", text).group(1)
        linked = await accounts.link(telegram, code)
        assert await bot.balance(alice) == 20 + 19 == linked.balance
        assert made_on_telegram.generation.id in [g.id for g in await bot.generations(alice)]

        reused = await fake.slash("link", {"code": code}, user=fake.user("carol"))
        [refusal] = await wait_for(lambda: fake.ephemeral_texts(reused))
        assert "already used" in refusal
        wrong = await fake.slash("link", {"code": "NOPE-NOPE-NOPE"}, user=fake.user("dave"))
        [refusal] = await wait_for(lambda: fake.ephemeral_texts(wrong))
        assert "wrong or has expired" in refusal

        # The other way round: a Telegram code used on Discord.
        bob, bob_telegram = fake.user("bob"), UserIdentity("telegram", "4343")
        their_code = await accounts.link_code(bob_telegram)
        used = await fake.slash("link", {"code": their_code}, user=bob)
        [done] = await wait_for(lambda: fake.ephemeral_texts(used))
        assert done.startswith("Linked: Discord and Telegram are now one account.") and "balance is 40" in done
        assert (await accounts.balance(bob_telegram)).balance == 40
