"""What makes a reader wait for a job shown in its chat before it is recorded.

A job's images go to the chat while they are being stored; the job is recorded, and its delivery receipt
(the platform's file references) written, only after both. Until then a question about the job (a button
press, /history) must wait for that record instead of missing it, or of re-uploading what the platform
already holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from bot.core.models import UserIdentity

# How long a reader waits for a record at most; past it, it reads what is there.
RECORD_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class _Hold:
    owner: tuple[str, str]  # (platform, platform user id): display names change
    released: asyncio.Event


class RecordBarrier:
    def __init__(self) -> None:
        self._holds: dict[str, _Hold] = {}  # by job id and by each of its images' ids

    @contextlib.contextmanager
    def hold(self, generation_id: str, owner: UserIdentity, image_ids: Iterable[str] = ()) -> Iterator[None]:
        """Readers of this job, its images or its owner's history wait until the block is left."""
        hold = _Hold((owner.platform, owner.platform_user_id), asyncio.Event())
        keys = [generation_id, *image_ids]
        for key in keys:
            self._holds[key] = hold
        try:
            yield
        finally:
            for key in keys:
                if self._holds.get(key) is hold:
                    del self._holds[key]
            hold.released.set()

    async def wait(self, ids: Sequence[str] = (), owner: UserIdentity | None = None) -> None:
        """Wait, briefly, for the held jobs that have one of these ids (a job's or an image's) or this owner.
        Returns at once when there are none, which is nearly always."""
        who = (owner.platform, owner.platform_user_id) if owner else None
        waiting = {hold.released for key, hold in self._holds.items() if key in ids or hold.owner == who}
        if waiting:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECORD_WAIT_SECONDS):
                    await asyncio.gather(*(released.wait() for released in waiting))
