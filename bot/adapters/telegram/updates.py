"""How PTB runs updates: a few at a time, except those Telegram waits on with a deadline.

Telegram cancels a payment whose pre_checkout_query isn't answered within 10 seconds, and a button's
client spins until its callback query is answered (a late answer fails). PTB's own processor lets
CONCURRENT_UPDATES updates run and queues the rest in arrival order, so under a burst of image requests
those would wait behind all of them. This processor gives every other update the same few slots, and
lets the deadline updates run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

# PTB's own gate, which every update passes: wide open, since PTB has already made a task per update;
# the real limit is the slots below.
_UNGATED = 1_000_000


def has_deadline(update: object) -> bool:
    """A callback query or a pre-checkout query."""
    return isinstance(update, Update) and (
        update.callback_query is not None or update.pre_checkout_query is not None
    )


class DeadlinesFirst(BaseUpdateProcessor):
    def __init__(self, concurrent_updates: int) -> None:
        super().__init__(_UNGATED)
        self._slots = asyncio.Semaphore(concurrent_updates)

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        if has_deadline(update):
            await coroutine
            return
        async with self._slots:
            await coroutine

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
