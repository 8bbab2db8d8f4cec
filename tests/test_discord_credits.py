"""/balance, /models and /credits grant|revoke (configured admins only), all ephemeral."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import RuntimeFactory, wait_for
from tests.fakes.discord_harness import running_bot, serving_fake
from tests.fakes.discord_server import FakeDiscord


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


async def test_balance_is_private_and_lists_the_cost_per_model(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        asked = await fake.slash("balance", user=alice)
        [text] = await wait_for(lambda: fake.ephemeral_texts(asked))
    assert "You have **20 credits**" in text and "(`offline`): 1 credit per image" in text
    assert fake.original(asked).ephemeral  # type: ignore[union-attr]


async def test_only_admins_may_grant_or_revoke(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    admin, alice, bob = fake.user("admin"), fake.user("alice"), fake.user("bob")
    async with running_bot(runtime_factory, fake, admin_ids=[f"discord:{admin['id']}"]) as bot:
        refused = await fake.slash("credits", {"user": alice, "amount": 50}, subcommand="grant", user=bob)
        [text] = await wait_for(lambda: fake.ephemeral_texts(refused))
        assert text == "Only the bot's admins can change credits." and await bot.balance(alice) == 20

        granted = await fake.slash("credits", {"user": alice, "amount": 50}, subcommand="grant", user=admin)
        [text] = await wait_for(lambda: fake.ephemeral_texts(granted))
        assert text == "Added 50 credits to Alice. Their balance is now 70." and await bot.balance(alice) == 70
        await fake.redeliver(granted)  # the same event again: Discord refuses it, nothing is added twice

        revoked = await fake.slash("credits", {"user": alice, "amount": 100}, subcommand="revoke", user=admin)
        [text] = await wait_for(lambda: fake.ephemeral_texts(revoked))
        assert text == "Removed 70 credits from Alice. Their balance is now 0." and await bot.balance(alice) == 0


async def test_credits_from_a_dm(runtime_factory: RuntimeFactory, fake: FakeDiscord) -> None:
    admin, alice = fake.user("admin"), fake.user("alice")
    async with running_bot(runtime_factory, fake, admin_ids=[f"discord:{admin['id']}"]) as bot:
        granted = await fake.slash("credits", {"user": alice, "amount": 5}, subcommand="grant", user=admin, dm=True)
        await wait_for(lambda: fake.ephemeral_texts(granted))
        assert await bot.balance(alice) == 25


async def test_models_lists_the_models_and_their_cost_privately(
    runtime_factory: RuntimeFactory, fake: FakeDiscord
) -> None:
    alice = fake.user("alice")
    async with running_bot(runtime_factory, fake):
        asked = await fake.slash("models", user=alice)
        [text] = await wait_for(lambda: fake.ephemeral_texts(asked))
    assert "(`offline`): 1 credit per image · the default" in text
    assert fake.original(asked).ephemeral  # type: ignore[union-attr]
    assert "models" in {command["name"] for command in fake.commands["global"]}
