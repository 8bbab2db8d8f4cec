"""The inbox against the real Postgres: batches recorded in one statement (only the new reported), what
is unhandled listed for replay, one claimant at a time however many race, handled once, trimmed."""

from __future__ import annotations

import asyncio

from bot.core import inbox
from bot.core.inbox import Inbox


async def test_a_batch_is_recorded_once_and_listed_until_handled(pool) -> None:
    box = Inbox(pool)
    first = await box.record("telegram", [("1", {"text": "/imagine a"}), ("2", {"text": "/imagine b"})])
    again = await box.record("telegram", [("2", {"text": "/imagine b"}), ("3", {"text": "/imagine c"})])
    assert first == {"1", "2"} and again == {"3"}
    await box.record("discord", [("1", {"token": "t"})])  # another platform's id 1 is another event
    pending = await box.unhandled("telegram")
    assert [(e.event_id, e.payload) for e in pending] == [
        ("1", {"text": "/imagine a"}), ("2", {"text": "/imagine b"}), ("3", {"text": "/imagine c"})
    ]
    assert await box.claim("telegram", "2") and await box.handled("telegram", "2")
    assert [e.event_id for e in await box.unhandled("telegram")] == ["1", "3"]
    assert not await box.claim("telegram", "2"), "a handled event is never handed out again"
    assert [e.event_id for e in await box.unhandled("discord")] == ["1"]


async def test_many_concurrent_claims_of_one_event_have_one_winner(pool) -> None:
    await Inbox(pool).record("telegram", [("42", {"text": "/imagine race"})])
    claimants = [Inbox(pool) for _ in range(40)]  # 40 processes, say, all given the same update
    results = await asyncio.gather(*(c.claim("telegram", "42") for c in claimants))
    assert results.count(True) == 1
    winner = claimants[results.index(True)]
    others = [c for c in claimants if c is not winner]
    assert not any(await asyncio.gather(*(c.claim("telegram", "42") for c in others)))
    assert not any(await asyncio.gather(*(c.handled("telegram", "42") for c in others)))
    assert await winner.handled("telegram", "42")
    assert not any(await asyncio.gather(*(c.claim("telegram", "42") for c in claimants)))


async def test_a_claim_left_by_a_crash_runs_out(pool) -> None:
    crashed, survivor = Inbox(pool, claim_seconds=0.1), Inbox(pool)
    await crashed.record("telegram", [("7", {})])
    assert await crashed.claim("telegram", "7")
    assert not await survivor.claim("telegram", "7") and await survivor.unhandled("telegram") == []
    await asyncio.sleep(0.2)
    assert [e.event_id for e in await survivor.unhandled("telegram")] == ["7"]
    assert await survivor.claim("telegram", "7")
    assert not await crashed.handled("telegram", "7"), "no longer its claim"
    assert await survivor.handled("telegram", "7")


async def test_handled_entries_older_than_a_day_are_trimmed(pool) -> None:
    box = Inbox(pool)
    await box.record("telegram", [("old", {}), ("recent", {}), ("pending", {})])
    for event_id in ("old", "recent"):
        assert await box.claim("telegram", event_id) and await box.handled("telegram", event_id)
    await pool.execute("UPDATE image.inbox SET handled_at = now() - interval '25 hours' WHERE event_id = 'old'")
    assert await box.trim() == 1
    left = await pool.fetch("SELECT event_id FROM image.inbox ORDER BY event_id")
    assert [r["event_id"] for r in left] == ["pending", "recent"]
    async with pool.acquire() as conn:
        assert await inbox.trim_handled(conn) == 0


class CountingInbox(Inbox):
    """Counts the statements its claimed records take."""

    writes = 0

    async def _write_claimed(self, events):  # type: ignore[no-untyped-def]
        self.writes += 1
        return await super()._write_claimed(events)


async def test_a_burst_of_claimed_records_shares_statements_and_each_is_ours(pool) -> None:
    box = CountingInbox(pool)
    ids = [f"burst-{i}" for i in range(100)]
    recorded = await asyncio.gather(*(box.record_claimed("discord", i, {"token": i}) for i in ids))
    assert all(recorded)
    # A burst waits for one statement at a time, not for a hundred round trips (each a pool connection).
    assert box.writes <= 3
    again = await asyncio.gather(box.record_claimed("discord", ids[0], {}), box.record_claimed("discord", "new", {}))
    assert again == [False, True]
    assert not await Inbox(pool).claim("discord", ids[-1]), "claimed by the recording process"
    assert await box.handled("discord", ids[-1])
