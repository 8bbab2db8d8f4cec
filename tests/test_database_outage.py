"""The database out of reach while results are being shown (a TCP proxy between the bot and a real
Postgres, cut and restored): a job whose images reached the chat is recorded once the database is back,
never run or shown again, and charged once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bot.bootstrap import bootstrap
from bot.core import database
from bot.core.events import DeliveryReceipt
from bot.core.models import Destination, Generation, ImageFile, ImagineRequest, UserIdentity
from tests.conftest import make_settings, wait_for
from tests.fakes.core import RecordingObserver, ScriptedProvider, scripted_model
from tests.fakes.tcp_proxy import TcpProxy

HERE = Destination("test", "chat-1")
OUTAGE_SECONDS = 3.0
LEASE_SECONDS = 1.0


@dataclass
class CuttingObserver(RecordingObserver):
    """Cuts the database off as the first result reaches the chat, and brings it back a little later
    (several lease lengths: every lease runs out meanwhile)."""

    proxy: TcpProxy | None = None
    outage: list[asyncio.Task[None]] = field(default_factory=list)

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        receipt = await super().on_completed(job, images)
        if not self.outage:
            assert self.proxy is not None
            await self.proxy.cut()
            self.outage.append(asyncio.create_task(self._restore_later()))
        return receipt

    async def _restore_later(self) -> None:
        await asyncio.sleep(OUTAGE_SECONDS)
        assert self.proxy is not None
        await self.proxy.start()


async def test_results_shown_during_an_outage_are_recorded_once_it_ends(db_dsn: str, pool, tmp_path: Path) -> None:
    proxy = TcpProxy.for_dsn(db_dsn)
    await proxy.start()
    provider = ScriptedProvider(delay=0.2)
    observer = CuttingObserver(proxy=proxy)
    bot_pool = await database.create_pool(proxy.dsn(db_dsn), 10)
    try:
        settings = make_settings(
            tmp_path, models=(scripted_model(cost=1),), job_lease_seconds=LEASE_SECONDS, starting_credits=20
        )
        async with bootstrap(settings, [], pool=bot_pool, extra_providers={"scripted": provider}) as rt:
            rt.register(observer)
            accepted = [
                await rt.service.imagine(UserIdentity("test", f"u{i}"), ImagineRequest(f"p {i}", count=2), HERE)
                for i in range(3)
            ]
            await rt.start()
            ids = [a.generation.id for a in accepted]

            async def all_delivered() -> bool:
                return await pool.fetchval(
                    "SELECT count(*) FROM image.generations WHERE id = ANY($1) AND delivered_at IS NOT NULL", ids
                ) == len(ids)

            await wait_for(all_delivered, within=OUTAGE_SECONDS + 20)
            await asyncio.sleep(3 * LEASE_SECONDS)  # time for a wrongful takeover to show itself
    finally:
        await bot_pool.close()
        await proxy.close()

    assert observer.outage, "the database was never cut"
    shown = [job for event, job in observer.events if event == "completed"]
    assert sorted(shown) == sorted(ids), "each result shown exactly once"
    assert len(provider.calls) == len(ids), "no job ran twice"
    rows = await pool.fetch(
        """SELECT g.status, g.attempts, (SELECT count(*) FROM image.images i WHERE i.generation_id = g.id) AS images,
                  (SELECT count(*) FROM image.credit_ledger l WHERE l.generation_id = g.id AND l.reason = 'reserve')
                      AS reserves,
                  (SELECT count(*) FROM image.credit_ledger l WHERE l.generation_id = g.id AND l.reason = 'refund')
                      AS refunds
           FROM image.generations g WHERE g.id = ANY($1)""",
        ids,
    )
    assert [(r["status"], r["attempts"], r["images"], r["reserves"], r["refunds"]) for r in rows] == [
        ("succeeded", 1, 2, 1, 0)
    ] * len(ids)
    balances = await pool.fetch("SELECT balance FROM image.accounts")
    assert [b["balance"] for b in balances] == [18] * len(ids)
    assert isinstance(pool, asyncpg.Pool)
