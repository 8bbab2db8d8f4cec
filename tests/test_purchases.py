"""Credits bought: one ledger row per charge, refunds that never take the balance below zero, what the
operator sees. Against the real database; the ledger's invariant under any interleaving, by hypothesis."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.core import credits
from bot.core.credits import CreditPack
from bot.core.errors import BotError, Contended
from bot.core.models import Destination, ImagineRequest, UserIdentity
from bot.core.shop import Shop
from tests.test_cli import bot_command

ALICE = UserIdentity("test", "alice", "Alice")
HERE = Destination("test", "chat-1")
SMALL = CreditPack("small", 50, stars=25)


async def user_id(pool: asyncpg.Pool, who: UserIdentity, welcome: int = 20) -> int:
    async with pool.acquire() as conn:
        return (await credits.ensure_user(conn, who, welcome)).id


async def balance_and_ledger(pool: asyncpg.Pool) -> list[tuple[int, int]]:
    """Every balance holder's cached balance and the sum of its ledger."""
    rows = await pool.fetch(
        """SELECT a.balance,
                  coalesce((SELECT sum(l.delta) FROM image.credit_ledger l WHERE l.account_id = a.id), 0) AS total
           FROM image.accounts a ORDER BY a.id"""
    )
    return [(r["balance"], r["total"]) for r in rows]


async def test_a_purchase_credits_once_per_charge(pool) -> None:
    uid = await user_id(pool, ALICE)
    async with pool.acquire() as conn:
        first = await credits.purchase(conn, uid, "telegram", "charge-1", SMALL, 25, "XTR")
    async with pool.acquire() as a, pool.acquire() as b:
        again = await asyncio.gather(
            credits.purchase(a, uid, "telegram", "charge-1", SMALL, 25, "XTR"),
            credits.purchase(b, uid, "telegram", "charge-1", SMALL, 25, "XTR"),
        )
    assert first.new and first.balance == 70
    assert [r.new for r in again] == [False, False] and again[0].balance == 70
    rows = await pool.fetch("SELECT delta, reason, idempotency_key FROM image.credit_ledger WHERE reason = 'purchase'")
    assert [(r["delta"], r["idempotency_key"]) for r in rows] == [(50, "purchase:telegram:charge-1")]
    assert await balance_and_ledger(pool) == [(70, 70)]


async def test_a_refund_takes_back_only_what_is_left_and_records_the_rest(runtime_factory, pool, caplog) -> None:
    async with runtime_factory(starting_credits=0) as rt:
        uid = await user_id(pool, ALICE, 0)
        async with pool.acquire() as conn:
            await credits.purchase(conn, uid, "telegram", "charge-2", CreditPack("small", 5, stars=3), 3, "XTR")
        await rt.service.imagine(ALICE, ImagineRequest("three owls", count=3), HERE)  # spends 3 of the 5
        async with pool.acquire() as conn:
            refund = await credits.refund_purchase(conn, "telegram", "charge-2")
            again = await credits.refund_purchase(conn, "telegram", "charge-2")
            missing = await credits.refund_purchase(conn, "telegram", "no-such-charge")
        balance = await rt.accounts.balance(ALICE)
    assert refund is not None and (refund.taken_back, refund.shortfall, refund.balance, refund.new) == (2, 3, 0, True)
    assert again is not None and not again.new and again.taken_back == 2
    assert missing is None
    assert balance.balance == 0 and balance.bought == 3
    assert "3 of its 5 credits were already spent" in caplog.text
    reasons = await pool.fetch("SELECT delta, reason FROM image.credit_ledger ORDER BY id")
    assert [(r["delta"], r["reason"]) for r in reasons] == [(5, "purchase"), (-3, "reserve"), (-2, "purchase_refund")]
    assert await balance_and_ledger(pool) == [(0, 0)]


async def test_balance_shows_what_was_bought(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        uid = await user_id(pool, ALICE)
        async with pool.acquire() as conn:
            await credits.purchase(conn, uid, "discord", "ent-1", SMALL)
            await credits.purchase(conn, uid, "telegram", "charge-3", SMALL, 25, "XTR")
        balance = await rt.accounts.balance(ALICE)
    assert (balance.balance, balance.bought) == (120, 100)


def test_packs_are_offered_where_they_have_a_price(tmp_path: Path) -> None:
    from bot.core.credits import CreditPolicy

    packs = [CreditPack("stars-only", 10, stars=5), CreditPack("sku-only", 10, discord_sku_id="13"),
             CreditPack("both", 30, stars=12, discord_sku_id="14")]
    shop = Shop(None, packs, CreditPolicy(True, 0, frozenset()), frozenset())  # type: ignore[arg-type]
    assert [p.name for p in shop.packs_for("telegram")] == ["stars-only", "both"]
    assert [p.name for p in shop.packs_for("discord")] == ["sku-only", "both"]
    assert shop.pack_for_sku("14") is packs[2] and shop.pack_for_sku("99") is None
    off = Shop(None, packs, CreditPolicy(False, 0, frozenset()), frozenset())  # type: ignore[arg-type]
    assert off.packs_for("telegram") == []


def test_the_default_packs_sell_on_telegram_and_bad_packs_are_refused(tmp_path: Path) -> None:
    from bot.config import Settings

    default = Settings(_env_file=None)  # type: ignore[call-arg]
    assert default.credit_packs and all(p.stars for p in default.credit_packs)
    for bad in ('[{"name": "a", "credits": 0, "stars": 5}]', '[{"name": "a", "credits": 5, "stars": 0}]',
                '[{"name": "a", "credits": 5}, {"name": "a", "credits": 6}]',
                '[{"name": "a", "credits": 5, "discord_sku_id": "x1"}]'):
        with pytest.raises(ValueError, match="CREDIT_PACKS"):
            Settings(_env_file=None, credit_packs=bad)  # type: ignore[call-arg]


def test_operator_lists_purchases_and_daily_totals(db_dsn: str, tmp_path: Path) -> None:
    async def seed() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            uid = (await credits.ensure_user(conn, UserIdentity("telegram", "42"), 20)).id
            await credits.purchase(conn, uid, "telegram", "ch-a", SMALL, 25, "XTR")
            await credits.purchase(conn, uid, "telegram", "ch-b", CreditPack("big", 200, stars=80), 80, "XTR")
            await credits.adjust(conn, uid, -260, admin_id=None, key="spend")
            await credits.refund_purchase(conn, "telegram", "ch-b")
        finally:
            await conn.close()

    asyncio.run(seed())
    listed = bot_command("credits", "purchases", "telegram:42", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "ch-b big +200 for 80 XTR; refunded" in lines[0] and "10 taken back, 190 already spent" in lines[0]
    assert "ch-a small +50 for 25 XTR" in lines[1]
    totals = bot_command("credits", "totals", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert totals.returncode == 0, totals.stderr
    assert totals.stdout.splitlines()[1].split()[1:] == ["telegram", "2", "250", "105", "XTR", "1", "190"]
    short = bot_command("credits", "shortfalls", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert "ch-b" in short.stdout and "ch-a" not in short.stdout


# --- the ledger's invariant ----------------------------------------------------------------------

OPERATIONS = st.sampled_from(["buy", "buy-again", "imagine", "cancel", "refund-purchase", "revoke", "link"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(OPERATIONS, st.integers(0, 2), st.integers(1, 4)), min_size=1, max_size=16))
async def test_cached_balance_is_the_ledger_sum_and_never_negative(runtime_factory, pool, steps) -> None:
    """Any sequence of purchases, reservations, job refunds, purchase refunds, revokes and links, run with
    real interleavings (in concurrent batches) by three people on three platforms, keeps every account's
    balance equal to its ledger."""
    run = secrets.token_hex(4)
    people = [UserIdentity(f"platform{i}", run) for i in range(3)]
    charges: list[str] = []
    jobs: list[tuple[UserIdentity, str]] = []
    async with runtime_factory(starting_credits=2, per_user_queued_limit=1000) as rt:
        ids = [await user_id(pool, who, 2) for who in people]

        async def step(op: str, who: int, n: int) -> None:
            async with pool.acquire() as conn:
                if op == "buy":
                    charges.append(f"{run}-c{len(charges)}")
                    await credits.purchase(conn, ids[who], "test", charges[-1], CreditPack("p", n))
                elif op == "buy-again" and charges:
                    await credits.purchase(conn, ids[who], "test", charges[-1], CreditPack("p", n))
                elif op == "refund-purchase" and charges:
                    await credits.refund_purchase(conn, "test", charges[n % len(charges)])
                elif op == "revoke":
                    await credits.adjust(conn, ids[who], -n, admin_id=None, key=f"{run}-r{secrets.token_hex(4)}")
            if op == "imagine":
                try:
                    accepted = await rt.service.imagine(people[who], ImagineRequest("a fox", count=n), HERE)
                    jobs.append((people[who], accepted.generation.id))
                except Contended:
                    raise  # a deadlock victim: every account lock is taken in one order, so never
                except BotError:
                    pass  # not enough credits: refused, nothing written
            elif op == "link":
                try:
                    code = await rt.accounts.link_code(people[who])
                    await rt.accounts.link(people[(who + n) % 3], code)
                    event("linked")
                except Contended:
                    raise
                except BotError:
                    pass  # its own code, or already one account
            elif op == "cancel" and jobs:
                owner, job_id = jobs[n % len(jobs)]
                try:
                    await rt.service.cancel(owner, job_id, HERE.chat_id)
                except Contended:
                    raise
                except BotError:
                    pass  # cancelled already

        for start in range(0, len(steps), 4):
            await asyncio.gather(*(step(*s) for s in steps[start:start + 4]))
    for cached, total in await balance_and_ledger(pool):
        assert cached == total >= 0
