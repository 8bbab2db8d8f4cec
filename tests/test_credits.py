"""Credits: reserve on acceptance, refunds, races, admin grants. Against the real database."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bot.core import credits
from bot.core.credits import CreditPolicy
from bot.core.errors import Forbidden, InsufficientCredits, InvalidRequest
from bot.core.models import Destination, ImagineRequest, UserIdentity
from tests.conftest import wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model

ALICE = UserIdentity("test", "alice", "Alice")
BOB = UserIdentity("test", "bob", "Bob")
ADMIN = UserIdentity("test", "admin", "Admin")
HERE = Destination("test", "chat-1")


async def ledger_sum(pool: asyncpg.Pool, who: UserIdentity) -> tuple[int, int]:
    row = await pool.fetchrow(
        """SELECT a.balance, coalesce(sum(l.delta), 0) AS total FROM image.users u
           JOIN image.accounts a ON a.id = u.account_id LEFT JOIN image.credit_ledger l ON l.account_id = a.id
           WHERE u.platform = $1 AND u.platform_user_id = $2 GROUP BY a.balance""",
        who.platform, who.platform_user_id,
    )
    return row["balance"], row["total"]


async def test_200_concurrent_requests_with_credit_for_10(runtime_factory, pool) -> None:
    async with runtime_factory(starting_credits=10, per_user_queued_limit=1000) as rt:
        # The worker is not started: jobs stay queued, so only the reservations are under test.
        results = await asyncio.gather(
            *(rt.service.imagine(ALICE, ImagineRequest(f"a lighthouse {i}"), HERE) for i in range(200)),
            return_exceptions=True,
        )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(accepted) == 10
    assert len(refused) == 190
    assert all(r.balance >= 0 for r in accepted)
    balance, total = await ledger_sum(pool, ALICE)
    assert balance == 0 and total == 0
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 10


async def test_refusal_message_states_balance_and_cost(runtime_factory, pool) -> None:
    async with runtime_factory(starting_credits=3) as rt:
        with pytest.raises(InsufficientCredits) as caught:
            await rt.service.imagine(ALICE, ImagineRequest("four cats", count=4), HERE)
    assert "needs 4 credits" in caught.value.user_message and "have 3" in caught.value.user_message
    assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
    assert await ledger_sum(pool, ALICE) == (3, 3)


async def test_same_idempotency_key_charges_once(runtime_factory, pool) -> None:
    async with runtime_factory(starting_credits=10) as rt:
        results = await asyncio.gather(
            *(rt.service.imagine(ALICE, ImagineRequest("a cat", count=2), HERE, idempotency_key="event-42")
              for _ in range(5))
        )
    assert len({r.generation.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await ledger_sum(pool, ALICE) == (8, 8)


@pytest.mark.parametrize(
    ("steps", "status", "refunded"),
    [
        ([], "succeeded", 0),
        (["refuse", "refuse"], "failed", 4),
        (["down"] * 4, "failed", 4),
        ([None, "down", "down"], "partial", 2),
    ],
)
async def test_refunds_follow_what_was_delivered(runtime_factory, pool, steps, status, refunded) -> None:
    from bot.core.errors import ContentRefused, ProviderUnavailable

    mapping = {"refuse": ContentRefused("The image service declined this prompt."),
               "down": ProviderUnavailable("The image service is down.")}
    provider = ScriptedProvider(steps=[mapping.get(s, s) if s else None for s in steps])
    observer = RecordingObserver()
    model = scripted_model(cost=2, per_call=1)
    async with runtime_factory({"scripted": provider}, models=(model,), provider_max_retries=1) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("two owls", count=2), HERE)
        job = await wait_for(lambda: observer.done.get(accepted.generation.id))
    assert job.status == status
    assert job.credits_reserved == 4 and job.credits_refunded == refunded
    assert await ledger_sum(pool, ALICE) == (20 - 4 + refunded,) * 2
    images = await pool.fetchval("SELECT count(*) FROM image.images WHERE generation_id = $1", job.id)
    assert images == {"succeeded": 2, "partial": 1, "failed": 0}[status]
    if status != "succeeded":
        assert job.error_message in ("The image service declined this prompt.", "The image service is down.")
    # Refusals are not retried; an exhausted outage was tried 1 + provider_max_retries times per call.
    assert len(provider.calls) == {"succeeded": 2, "failed": 2 if "refuse" in steps else 4, "partial": 3}[status]


async def test_cancel_refunds_a_running_job(runtime_factory, pool) -> None:
    provider = ScriptedProvider(steps=["block"])
    observer = RecordingObserver()
    async with runtime_factory({"scripted": provider}, models=(scripted_model(cost=3),)) as rt:
        rt.register(observer)
        await rt.start()
        accepted = await rt.service.imagine(ALICE, ImagineRequest("a slow fox"), HERE)
        await asyncio.wait_for(provider.started.wait(), 5)
        with pytest.raises(Forbidden):
            await rt.service.cancel(BOB, accepted.generation.id, HERE.chat_id)
        cancelled = await rt.service.cancel(ALICE, accepted.generation.id, HERE.chat_id)
        provider.release.set()
        await asyncio.sleep(0.1)
        with pytest.raises(InvalidRequest):
            await rt.service.cancel(ALICE, accepted.generation.id, HERE.chat_id)
    assert cancelled.status == "cancelled" and cancelled.credits_refunded == 3
    assert ("cancelled", cancelled.id) in observer.events
    assert ("completed", cancelled.id) not in observer.events
    assert await ledger_sum(pool, ALICE) == (20, 20)
    assert await pool.fetchval("SELECT count(*) FROM image.images") == 0


async def test_cancel_a_queued_job(runtime_factory, pool) -> None:
    observer = RecordingObserver()
    async with runtime_factory() as rt:
        rt.register(observer)
        accepted = await rt.service.imagine(ALICE, ImagineRequest("a queued heron", count=3), HERE)
        cancelled = await rt.service.cancel(ALICE, accepted.generation.id, HERE.chat_id)
    assert cancelled.credits_refunded == 3
    assert await ledger_sum(pool, ALICE) == (20, 20)


async def test_admin_grant_and_revoke(runtime_factory, pool) -> None:
    async with runtime_factory(admin_ids=["test:admin"]) as rt:
        with pytest.raises(Forbidden):
            await rt.accounts.grant(BOB, ALICE, 5)
        granted = await rt.accounts.grant(ADMIN, ALICE, 5, idempotency_key="cmd-1")
        again = await rt.accounts.grant(ADMIN, ALICE, 5, idempotency_key="cmd-1")
        revoked = await rt.accounts.grant(ADMIN, ALICE, -100)
        with pytest.raises(InvalidRequest):
            await rt.accounts.grant(ADMIN, ALICE, 0)
    assert (granted.applied, granted.balance) == (5, 25)
    assert again.applied == 0
    assert (revoked.applied, revoked.balance) == (-25, 0)
    assert await ledger_sum(pool, ALICE) == (0, 0)


async def test_credits_off_charges_nothing(runtime_factory, pool) -> None:
    async with runtime_factory(credits_enabled=False) as rt:
        accepted = await rt.service.imagine(ALICE, ImagineRequest("free art", count=4), HERE)
        balance = await rt.accounts.balance(ALICE)
    assert accepted.generation.credits_reserved == 0 and accepted.balance is None
    assert not balance.credits_enabled
    assert await pool.fetchval("SELECT count(*) FROM image.credit_ledger") == 0


def test_the_policy_prices_per_image_and_welcomes_only_when_credits_are_on() -> None:
    on, off = CreditPolicy(True, 20, frozenset({"test:admin"})), CreditPolicy(False, 20, frozenset())
    assert on.cost(scripted_model(cost=3), 4) == 12 and off.cost(scripted_model(cost=3), 4) == 0
    assert (on.welcome, off.welcome) == (20, 0)
    assert on.is_admin(ADMIN) and not on.is_admin(ALICE)


async def test_a_finished_job_refunds_the_images_it_did_not_deliver(runtime_factory) -> None:
    async with runtime_factory({"scripted": ScriptedProvider()}, models=(scripted_model(cost=3),)) as rt:
        job = (await rt.service.imagine(ALICE, ImagineRequest("three owls", count=3), HERE)).generation
    assert job.credits_reserved == 9
    assert [credits.refund_for_missing(job, kept) for kept in (3, 2, 1, 0)] == [0, 3, 6, 9]


async def test_one_welcome_grant_whichever_way_a_user_first_arrives(runtime_factory, pool) -> None:
    """image.ensure_user is the one path: the accepting call and a /balance racing for a new user."""
    async with runtime_factory(starting_credits=7) as rt:
        await asyncio.gather(
            *(rt.accounts.balance(BOB) for _ in range(3)),
            *(rt.service.imagine(BOB, ImagineRequest(f"first {i}"), HERE) for i in range(3)),
        )
        async with pool.acquire() as conn:
            again = await credits.ensure_user(conn, UserIdentity("test", "bob", "Bobby"), 7)
    welcome = await pool.fetch("SELECT delta FROM image.credit_ledger WHERE reason = 'welcome'")
    assert [r["delta"] for r in welcome] == [7]
    assert again.balance == 7 - 3 == (await ledger_sum(pool, BOB))[0]
    assert await pool.fetchval("SELECT display_name FROM image.users WHERE platform_user_id = 'bob'") == "Bobby"


async def test_a_full_refund_is_given_once(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        job = (await rt.service.imagine(ALICE, ImagineRequest("a heron", count=2), HERE)).generation
    async with pool.acquire() as conn:
        first = await credits.end_with_full_refund(conn, job.id, "failed", "shutdown", "Stopped.", "w", 30)
        second = await credits.end_with_full_refund(conn, job.id, "cancelled", "cancelled", "Cancelled.", "w", 30)
    assert (first, second) == (2, None)
    assert await ledger_sum(pool, ALICE) == (20, 20)
    assert await pool.fetchval("SELECT status FROM image.generations WHERE id = $1", job.id) == "failed"
