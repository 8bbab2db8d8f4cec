"""A real Discord `python -m bot run` process SIGKILLed at each step of one /imagine, from the moment the
interaction arrives, then a new process started on the same database. After it the user sees exactly one
outcome: the image (once), or a plain message that the request was not taken, never two and never a
"thinking…" left forever; the credits charged are those of the images delivered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.adapters.discord.intake import NOT_TAKEN
from tests.conftest import wait_for
from tests.fakes.discord_harness import finished, serving_fake
from tests.fakes.discord_server import (
    ACK_WINDOW_SECONDS,
    TOKEN_LIFETIME_SECONDS,
    FakeDiscord,
    FakeInteraction,
    FakeMessage,
)
from tests.test_discord_edits import picture
from tests.test_discord_shards import start_discord
from tests.test_roles import Output
from tests.test_run_process import wait_exit

STARTING_CREDITS = 20
# Short claims and leases: what the killed process held is taken over within seconds.
FAST = {"INBOX_CLAIM_SECONDS": "1", "JOB_LEASE_SECONDS": "1.5", "STARTING_CREDITS": str(STARTING_CREDITS)}
CALLBACK = r"/interactions/\d+/[^/]+/callback"
WEBHOOK_MESSAGE = r"/webhooks/\d+/[^/]+/messages/(@original|\d+)"


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with serving_fake(monkeypatch) as fake:
        yield fake


class Crash:
    """One /imagine: the first process, killed when the test says, then the second on the same database."""

    def __init__(self, fake: FakeDiscord, dsn: str, tmp_path: Path) -> None:
        self.fake, self.dsn, self.tmp_path = fake, dsn, tmp_path

    async def start(self, **env: str) -> Output:
        bot = start_discord(self.fake, self.dsn, self.tmp_path / "first", **FAST, **env)
        await bot.wait_for("running:")
        return bot

    async def imagine(self, **options: object) -> FakeInteraction:
        return await self.fake.slash(
            "imagine", {"prompt": "a lighthouse that outlives its bot", **options}, user=self.fake.user("ann")
        )

    async def kill_and_restart(self, bot: Output, **env: str) -> Output:
        bot.process.kill()
        await wait_exit(bot.process)
        return start_discord(self.fake, self.dsn, self.tmp_path / "second", **FAST, **env)


async def settled(pool: asyncpg.Pool) -> bool:
    """Nothing left to do: every inbox entry handled, every job finished and delivered."""
    return bool(await pool.fetchval(
        """SELECT NOT EXISTS (SELECT 1 FROM image.inbox WHERE handled_at IS NULL)
              AND NOT EXISTS (SELECT 1 FROM image.generations WHERE delivered_at IS NULL)"""
    ))


async def outcome(fake: FakeDiscord, pool: asyncpg.Pool, interaction: FakeInteraction) -> str:
    """Waits for the end, then checks there is exactly one outcome and the books agree: "image" or
    "not taken"."""

    def results() -> list[FakeMessage]:
        return [m for m in fake.messages.values() if not m.deleted and "🔄" in m.labels()]

    def shown() -> bool:
        original = fake.original(interaction)
        return bool(results()) or (original is not None and original.content == NOT_TAKEN)

    await wait_for(shown, within=30)
    await wait_for(lambda: settled(pool), within=30)
    with_images = [m for m in fake.messages.values() if m.attachments and not m.deleted]
    original = fake.original(interaction)
    assert original is not None and not original.deleted and not original.loading
    charged = await pool.fetchval(
        "SELECT coalesce(sum(credits_reserved - credits_refunded), 0) FROM image.generations"
    )
    balances = await pool.fetch(
        """SELECT a.balance, coalesce(sum(l.delta), 0) AS total FROM image.accounts a
           LEFT JOIN image.credit_ledger l ON l.account_id = a.id GROUP BY a.id"""
    )
    assert all(r["balance"] == r["total"] for r in balances), balances
    assert sum(r["balance"] for r in balances) == STARTING_CREDITS * len(balances) - charged
    told_not_taken = [r for r in fake.requests_for(interaction) if isinstance(r.json, dict)
                      and r.json.get("content") == NOT_TAKEN and r.status < 300]
    if results():
        assert told_not_taken == [], "told the request was not taken, then delivered it"
        assert with_images == results() and len(with_images[0].attachments) == 1, [m.content for m in with_images]
        # In the interaction's message, or (its token dead) in the channel, the stale status retired.
        assert with_images == [original] or original.buttons() == []
        assert charged == 1  # the offline model's one image
        return "image"
    assert with_images == [] and charged == 0
    return "not taken"


@pytest.mark.parametrize("deferral", ["from-the-gateway-event", "the-usual-way", "too-late"])
async def test_killed_while_the_deferral_is_answered(
    fake: FakeDiscord, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path, deferral: str
) -> None:
    """Step 1: the INTERACTION_CREATE is read and its deferral sent: from the gateway event (acks.py), or
    the usual way once the command runs (an /imagine with a picture). Discord shows "thinking…" and its
    answer is on its way back; the interaction was recorded meanwhile (the write goes out with the
    deferral, not after its answer), and the next process must settle it. Too late: the deferral was still
    on its way and reaches Discord after its 3 seconds; Discord itself tells the user the application did
    not respond, the interaction is dead, nothing is charged, the bot posts nothing."""
    late = deferral == "too-late"
    crash = Crash(fake, db_dsn, tmp_path)
    bot = await crash.start()
    held = fake.hold("POST", CALLBACK, carried_out=not late)
    options = {"image": fake.attachment(picture(), "holiday.png")} if deferral == "the-usual-way" else {}
    interaction = await crash.imagine(**options)
    await wait_for(lambda: held.arrived, within=30)
    if not late:
        await wait_for(lambda: pool.fetchval("SELECT count(*) = 1 FROM image.inbox"), within=30)
    restarted = await crash.kill_and_restart(bot)
    if late:
        fake.advance(ACK_WINDOW_SECONDS + 1)
        held.release()  # reaches Discord now: refused, the interaction is dead
    try:
        if late:
            # Nothing to wait for but the restarted process going through the inbox.
            await restarted.wait_for("running:")
            await wait_for(lambda: settled(pool), within=30)
            assert fake.original(interaction) is None and fake.followups(interaction) == []
            assert await pool.fetchval("SELECT count(*) FROM image.generations") == 0
        else:
            assert await outcome(fake, pool, interaction) == "not taken"
    finally:
        log = await restarted.stop()
        print(log)  # shown when the test fails
    assert "Traceback" not in log


async def waiting_on_a_lock(pool: asyncpg.Pool, statement: str) -> bool:
    """A statement containing `statement` is waiting for a lock (the test's)."""
    return bool(await pool.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0",
        statement,
    ))


async def no_statement(pool: asyncpg.Pool, statement: str) -> bool:
    return not await pool.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE state = 'active' AND strpos(query, $1) > 0", statement
    )


@pytest.mark.parametrize("released", ["at-the-kill", "after-the-restart-answered"])
async def test_killed_while_the_job_is_being_accepted(
    fake: FakeDiscord, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path, released: str
) -> None:
    """Step 2: deferred and recorded, the accept waiting for the database (a lock this test holds on the
    table it writes). Released at once, the killed process's statement may still commit (Postgres has not
    noticed its client is gone yet): the next process then finds the job accepted and delivers it, or else
    says nothing was taken. Released only after the next process said so, it must not commit any more."""
    crash = Crash(fake, db_dsn, tmp_path)
    bot = await crash.start()
    async with pool.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        try:
            await conn.execute("LOCK TABLE image.generations IN EXCLUSIVE MODE")
            interaction = await crash.imagine()
            await wait_for(lambda: waiting_on_a_lock(pool, "accept_job"), within=30)
            assert await pool.fetchval("SELECT handled_at IS NULL FROM image.inbox") is True
            restarted = await crash.kill_and_restart(bot)
            if released == "after-the-restart-answered":
                await wait_for(lambda: pool.fetchval("SELECT handled_at IS NOT NULL FROM image.inbox"), within=30)
        finally:
            await lock.rollback()
    # The killed process's statement has ended, committed or not: nothing can be accepted after this.
    await wait_for(lambda: no_statement(pool, "accept_job"), within=30)
    try:
        told = await outcome(fake, pool, interaction)
        if released == "after-the-restart-answered":
            assert told == "not taken"  # and the killed process's accept was aborted, not committed
    finally:
        log = await restarted.stop()
        print(log)  # shown when the test fails
    assert "Traceback" not in log


@pytest.mark.parametrize("token", ["alive", "expired-meanwhile"])
async def test_killed_while_the_provider_runs(
    fake: FakeDiscord, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path, token: str
) -> None:
    """Step 3: accepted, the image being made: the next process takes the job over once its lease ran out.
    Back after the interaction's 15 minutes, Discord refuses the token: the image goes to the channel."""
    crash = Crash(fake, db_dsn, tmp_path)
    bot = await crash.start(OFFLINE_DELAY_SECONDS="30")
    interaction = await crash.imagine()
    await wait_for(lambda: pool.fetchval("SELECT status = 'running' FROM image.generations"), within=30)
    restarted = await crash.kill_and_restart(bot, OFFLINE_DELAY_SECONDS="0.1")
    if token == "expired-meanwhile":
        fake.advance(TOKEN_LIFETIME_SECONDS + 60)
    try:
        assert await outcome(fake, pool, interaction) == "image"
        # The image in the interaction's own message while its token lives, else in a channel message.
        assert (finished(fake, interaction)() is not None) == (token == "alive")
    finally:
        log = await restarted.stop()
        print(log)  # shown when the test fails
    assert "Traceback" not in log


@pytest.mark.parametrize("when", ["upload-in-flight", "answered-receipt-unwritten"])
async def test_killed_while_the_image_is_delivered(
    fake: FakeDiscord, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path, when: str
) -> None:
    """Step 4: the edit carrying the image reached Discord and its answer is on its way back; or it was
    answered and its receipt is still to be written (a lock on the receipts' table). The job is still
    running then (its images are recorded once shown): the next process takes it over, makes the image
    again and shows it by editing the same message, not in a second one."""
    crash = Crash(fake, db_dsn, tmp_path)
    bot = await crash.start()
    async with pool.acquire() as conn:
        lock = conn.transaction()
        await lock.start()
        try:
            if when == "upload-in-flight":
                held = fake.hold("PATCH", WEBHOOK_MESSAGE, uploads_only=True)
                interaction = await crash.imagine()
                await wait_for(lambda: held.arrived, within=30)
            else:
                await conn.execute("LOCK TABLE image.delivery_parts IN EXCLUSIVE MODE")
                interaction = await crash.imagine()
                await wait_for(lambda: waiting_on_a_lock(pool, "delivery_parts"), within=30)
                assert finished(fake, interaction)() is not None
            restarted = await crash.kill_and_restart(bot)
            if when == "upload-in-flight":
                held.release()  # the next process's edit goes through
        finally:
            await lock.rollback()
    try:
        assert await outcome(fake, pool, interaction) == "image"
    finally:
        log = await restarted.stop()
        print(log)  # shown when the test fails
    assert "Traceback" not in log
