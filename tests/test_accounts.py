"""One account across platforms: link codes, balances that add up, histories and buttons shared, refusals
that change nothing, and the migration that gives every existing user an account. Real database."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import pytest

from bot.core import accounts, credits, database, queue
from bot.core.credits import CreditPack
from bot.core.errors import BotError, Contended, InvalidRequest, NotFound
from bot.core.models import Destination, GenerationStatus, ImagineRequest, UserIdentity
from tests.conftest import USER_BALANCE, wait_for, with_database

TG = UserIdentity("telegram", "111", "Tom")
DC = UserIdentity("discord", "222", "Tom on Discord")
TG_CHAT = Destination("telegram", "111")
DC_CHAT = Destination("discord", "dm-222")
HERE = Destination("test", "chat-1")
SMALL = CreditPack("small", 5)


async def balance(pool: asyncpg.Pool, who: UserIdentity) -> int:
    return await pool.fetchval(
        f"{USER_BALANCE} WHERE u.platform = $1 AND u.platform_user_id = $2", who.platform, who.platform_user_id
    )


async def books(pool: asyncpg.Pool) -> dict[int, tuple[int, int]]:
    rows = await pool.fetch(
        """SELECT a.id, a.balance, coalesce(sum(l.delta), 0) AS total FROM image.accounts a
           LEFT JOIN image.credit_ledger l ON l.account_id = a.id GROUP BY a.id"""
    )
    return {r["id"]: (r["balance"], r["total"]) for r in rows}


async def user_id_of(pool: asyncpg.Pool, who: UserIdentity) -> int:
    async with pool.acquire() as conn:
        return (await credits.ensure_user(conn, who, 50)).id


def test_codes_are_letters_digits_and_dashes_and_differ() -> None:
    codes = {accounts.new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(re.fullmatch(r"[A-Z0-9-]{6,16}", c) for c in codes)


async def test_link_adds_balances_and_shares_history_and_buttons(runtime_factory, pool) -> None:
    async with runtime_factory(starting_credits=20) as rt:
        on_telegram = await rt.service.imagine(TG, ImagineRequest("a telegram fox", count=2), TG_CHAT)
        on_discord = await rt.service.imagine(DC, ImagineRequest("a discord owl", count=3), DC_CHAT)
        code = await rt.accounts.link_code(TG)
        linked = await rt.accounts.link(DC, code.lower())  # typed by hand: case doesn't matter
        assert (linked.moved, linked.balance, linked.platforms) == (17, 18 + 17, ("discord", "telegram"))
        assert await balance(pool, TG) == await balance(pool, DC) == 35
        for who in (TG, DC):
            page = await rt.service.history(who)
            assert {i.generation.id for i in page.items} == {on_telegram.generation.id, on_discord.generation.id}
        # Buttons of either platform's results work for the other identity: it is the same account's.
        again = await rt.service.regenerate(DC, on_telegram.generation.id, DC_CHAT)
        assert again.balance == 35 - 2
        cancelled = await rt.service.cancel(TG, on_discord.generation.id, TG_CHAT.chat_id)
        assert cancelled.credits_refunded == 3
        assert (await rt.accounts.balance(DC)).balance == 36
        # Someone else still sees none of it.
        with pytest.raises(NotFound):
            await rt.service.generation(UserIdentity("telegram", "999"), on_telegram.generation.id, "elsewhere")
        with pytest.raises(InvalidRequest, match="already used"):
            await rt.accounts.link(UserIdentity("discord", "333"), code)
    link_rows = await pool.fetch("SELECT delta, reason FROM image.credit_ledger WHERE reason = 'link' ORDER BY id")
    assert [r["delta"] for r in link_rows] == [-17, 17]
    assert all(total == cached for cached, total in (await books(pool)).values())
    assert await pool.fetchval("SELECT count(*) FROM image.account_links") == 1


@pytest.mark.parametrize("case", ["wrong", "malformed", "expired", "own", "same-platform", "already-one"])
async def test_refused_codes_change_nothing(runtime_factory, pool, case) -> None:
    async with runtime_factory() as rt:
        other_tg = UserIdentity("telegram", "444")
        code = await rt.accounts.link_code(TG)
        await rt.accounts.balance(DC)
        await rt.accounts.balance(other_tg)
        if case == "expired":
            await pool.execute("UPDATE image.link_codes SET expires_at = now() - interval '1 second'")
        if case == "already-one":
            await rt.accounts.link(DC, code)
            code = await rt.accounts.link_code(DC)
        before = (await books(pool), await pool.fetch("SELECT id, account_id FROM image.users ORDER BY id"))
        who, used = {
            "wrong": (DC, "ABCD-EFGH-JKMN"),
            "malformed": (DC, "not a code!"),
            "expired": (DC, code),
            "own": (TG, code),
            "same-platform": (other_tg, code),
            "already-one": (TG, code),
        }[case]
        with pytest.raises(InvalidRequest) as refused:
            await rt.accounts.link(who, used)
        after = (await books(pool), await pool.fetch("SELECT id, account_id FROM image.users ORDER BY id"))
    assert before == after
    expected = {"wrong": "wrong or has expired", "malformed": "wrong or has expired", "expired": "expired",
                "own": "your own", "same-platform": "already has a Telegram identity", "already-one": "already one"}
    assert expected[case] in refused.value.user_message
    if case != "already-one":
        assert await pool.fetchval("SELECT count(*) FROM image.link_codes WHERE used_at IS NOT NULL") == 0


async def test_an_account_with_a_platform_takes_no_second_identity_of_it(runtime_factory, pool) -> None:
    """Telegram+Discord joined; a second Telegram user can't join it through either identity's code."""
    async with runtime_factory() as rt:
        await rt.accounts.link(DC, await rt.accounts.link_code(TG))
        for maker in (TG, DC):
            with pytest.raises(InvalidRequest, match="already has a Telegram"):
                await rt.accounts.link(UserIdentity("telegram", "555"), await rt.accounts.link_code(maker))


async def test_two_links_at_once_one_code(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        code = await rt.accounts.link_code(TG)
        results = await asyncio.gather(
            *(rt.accounts.link(UserIdentity("discord", f"d{i}"), code) for i in range(5)), return_exceptions=True
        )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, InvalidRequest) for r in results if isinstance(r, BaseException))
    assert all(total == cached for cached, total in (await books(pool)).values())


async def test_operator_unlinks(runtime_factory, pool) -> None:
    async with runtime_factory() as rt:
        await rt.accounts.link(DC, await rt.accounts.link_code(TG))
        async with pool.acquire() as conn:
            new_account = await accounts.unlink(conn, "discord", "222")
            alone = await accounts.unlink(conn, "discord", "222")
        assert new_account is not None and alone is None
        assert (await rt.accounts.balance(DC)).balance == 0 and (await rt.accounts.balance(TG)).balance == 40
        job = await rt.service.imagine(TG, ImagineRequest("mine again"), TG_CHAT)
        with pytest.raises(NotFound):  # no longer its own: it looks missing
            await rt.service.cancel(DC, job.generation.id, "dm-222")


async def test_the_migration_gives_every_user_an_account_with_their_credits(pg_server_dsn, tmp_path: Path) -> None:
    name = f"m_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = with_database(pg_server_dsn, name)
    before = tmp_path / "before"
    before.mkdir()
    for m in database.load_migrations():
        if m.version < 15:
            (before / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    pool = await database.create_pool(dsn, 2)
    try:
        await database.migrate(pool, before)
        for uid, welcome in (("a", 20), ("b", 5)):
            await pool.execute("SELECT image.ensure_user('telegram', $1, '', $2)", uid, welcome)
        job = {"id": "g1", "prompt": "an old fox", "model": "m", "aspect_ratio": "1:1", "count": 2, "seed": 1,
               "kind": "imagine", "credits_reserved": 2, "platform": "telegram", "chat_id": "1"}
        accept = "SELECT * FROM image.accept_job('telegram', 'a', '', 20, 10, 10, $1::jsonb)"
        await pool.execute(accept, json.dumps(job))
        await database.migrate(pool)
        rows = await pool.fetch(
            f"{USER_BALANCE.replace('a.balance', 'u.platform_user_id, u.id, u.account_id, a.balance')} ORDER BY u.id"
        )
        assert [(r["platform_user_id"], r["balance"]) for r in rows] == [("a", 18), ("b", 5)]
        assert all(r["id"] == r["account_id"] for r in rows)
        assert all(cached == total for cached, total in (await books(pool)).values())
        # A user made after the migration gets an account of its own, numbered after the old ones.
        new = await pool.fetchval("SELECT r_user_id FROM image.ensure_user('discord', 'c', '', 7)")
        assert await pool.fetchval("SELECT account_id FROM image.users WHERE id = $1", new) > rows[-1]["account_id"]
        assert await pool.fetchval(
            "SELECT g.user_id FROM image.generations g JOIN image.users u ON u.id = g.user_id WHERE g.id = 'g1'"
        ) == rows[0]["id"]
    finally:
        await pool.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_console_links_both_ways(runtime_factory, tmp_path: Path) -> None:
    from bot.adapters.console import Console, ConsoleObserver

    said: list[str] = []
    async with runtime_factory() as rt:
        observer = ConsoleObserver(tmp_path, said.append)
        console = Console(rt.service, rt.accounts, observer, UserIdentity("console", "me"))
        await console.handle("/link")
        code = re.search(r"Your link code: (\S+)", said[-1]).group(1)
        assert "/link " + code in said[-1]
        await console.handle("/link " + code)
        assert "your own" in said[-1]
        await rt.accounts.link(TG, code)
        await console.handle("/link " + code)
        assert "already used" in said[-1]
        mine = await rt.accounts.link_code(DC)
        await console.handle(f"/link {mine}")
        assert said[-1].startswith("Linked: Console, Discord and Telegram are now one account.")
        assert "balance is 60" in said[-1]
        # What the linked Telegram identity bought shows in the console's balance: one account.
        async with rt.pool.acquire() as conn:
            telegram = await credits.find_user(conn, "telegram", TG.platform_user_id)
            await credits.purchase(conn, telegram.id, "telegram", "stxch_console", credits.CreditPack("s", 5))
        await console.handle("/balance")
        assert said[-1] == "Balance: 65 credits (5 credits bought)"


def test_operator_unlinks_from_the_command_line(db_dsn: str, tmp_path: Path) -> None:
    from tests.test_cli import bot_command

    async def seed() -> None:

        conn = await asyncpg.connect(db_dsn)
        try:
            maker = await credits.ensure_user(conn, TG, 20)
            joiner = await credits.ensure_user(conn, DC, 20)
            await accounts.use_code(conn, joiner.id, await accounts.issue_code(conn, maker.id))
        finally:
            await conn.close()

    asyncio.run(seed())
    done = bot_command("credits", "unlink", "discord:222", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert done.returncode == 0 and "account of its own" in done.stdout, done.stderr
    again = bot_command("credits", "unlink", "discord:222", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert again.returncode == 1 and "not linked" in again.stderr
    ledger = bot_command("credits", "ledger", "telegram:111", tmp_path=tmp_path, DATABASE_URL=db_dsn)
    assert "balance 40" in ledger.stdout


async def test_links_charges_refunds_and_purchases_at_once_never_deadlock(runtime_factory, pool) -> None:
    """Three identities linking in a ring (each code used by the next), while each is charged (renamed on
    the way), refunded (a cancel, and a worker's batch of failed runs), credited and has a purchase taken
    back, all at once, round after round: every lock on the accounts is taken in one order, so Postgres
    never has to pick a deadlock victim."""
    rounds = 30
    failures: list[BaseException] = []
    async with runtime_factory(starting_credits=50) as rt:

        async def attempt(work: Awaitable[object]) -> object:
            try:
                return await work
            except (Contended, asyncpg.DeadlockDetectedError) as error:
                failures.append(error)
            except BotError:
                pass  # refused (already one account, a platform taken, not enough credits): nothing changed
            return None

        async def one_round(run: str) -> None:
            people = [UserIdentity(f"p{i}", run, "before") for i in range(3)]
            renamed = [UserIdentity(who.platform, run, "after") for who in people]
            ids = [await user_id_of(pool, who) for who in people]
            codes = [await rt.accounts.link_code(who) for who in people]
            for who in people:
                await rt.service.imagine(who, ImagineRequest("a fox that fails"), HERE)
            async with pool.acquire() as conn:
                running = await queue.claim(conn, [HERE.platform], 10, "worker", 60, 100)
            jobs = [await rt.service.imagine(who, ImagineRequest("a fox"), HERE) for who in people]
            async with pool.acquire() as conn:
                for i, who in enumerate(ids):
                    await credits.purchase(conn, who, "test", f"{run}-{i}", SMALL)

            async def buy(i: int) -> None:
                async with pool.acquire() as conn:
                    await credits.purchase(conn, ids[i], "test", f"{run}-{i}-again", SMALL)

            async def take_back(i: int) -> None:
                async with pool.acquire() as conn:
                    await credits.refund_purchase(conn, "test", f"{run}-{i}")

            async def fail_all() -> None:  # as a worker records the runs that ended together: one batch
                failed = [
                    queue.Finished(job.id, queue.Outcome(GenerationStatus.FAILED, (), job.credits_reserved, "x", "x"))
                    for job in running
                ]
                async with pool.acquire() as conn:
                    await queue.finish(conn, "worker", 60, failed)

            await asyncio.gather(attempt(fail_all()), *(
                attempt(work) for i in range(3) for work in (
                    rt.accounts.link(people[(i + 1) % 3], codes[i]),
                    rt.service.imagine(renamed[i], ImagineRequest("a fox"), HERE),
                    rt.service.cancel(people[i], jobs[i].generation.id, HERE.chat_id),
                    buy(i),
                    take_back(i),
                )
            ))

        for _ in range(rounds):
            await one_round(secrets.token_hex(4))
    assert not failures, f"{len(failures)} deadlocks in {rounds} rounds: {failures[0]!r}"
    assert all(total == cached for cached, total in (await books(pool)).values())


async def test_a_batch_of_refunds_takes_its_accounts_in_the_one_order(runtime_factory, pool) -> None:
    """A worker's batch refunds two identities whose accounts' order differs from theirs (linked, then the
    first unlinked into a new account), while another transaction holds the lower account and then takes
    the higher: the batch waits for both at once, holding neither, instead of holding one."""
    async with runtime_factory(starting_credits=20) as rt:
        await rt.accounts.link(DC, await rt.accounts.link_code(TG))
        async with pool.acquire() as conn:
            await accounts.unlink(conn, "telegram", "111")
        await rt.accounts.operator_adjust(TG, 5)  # its new account starts empty
        for who, chat in ((TG, TG_CHAT), (DC, DC_CHAT)):
            await rt.service.imagine(who, ImagineRequest("a fox that fails"), chat)
        async with pool.acquire() as conn:
            running = await queue.claim(conn, ["telegram", "discord"], 10, "worker", 60, 10)
            first, second = [await credits.ensure_user(conn, who, 0) for who in (TG, DC)]
        assert first.id < second.id and first.account_id > second.account_id
        failed = [
            queue.Finished(job.id, queue.Outcome(GenerationStatus.FAILED, (), job.credits_reserved, "x", "x"))
            for job in running
        ]

        async def batch() -> None:
            async with pool.acquire() as conn:
                await queue.finish(conn, "worker", 60, failed)

        async with pool.acquire() as conn, conn.transaction():
            await credits.lock_accounts(conn, [second.id])  # the lower account
            batched = asyncio.create_task(batch())
            await wait_for(lambda: pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ))
            await credits.lock_accounts(conn, [first.id])  # the higher: the batch must not be holding it
        await batched
    assert await pool.fetchval("SELECT count(*) FROM image.generations WHERE status = 'failed'") == 2
    assert all(total == cached for cached, total in (await books(pool)).values())
