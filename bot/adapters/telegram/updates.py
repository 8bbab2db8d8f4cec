"""How PTB runs updates: a few at a time, except the one kind that can't wait.

Telegram cancels a payment whose pre_checkout_query isn't answered within 10 seconds. PTB's own
processor lets CONCURRENT_UPDATES updates run and queues the rest in arrival order, so under a burst of
image requests a pre-checkout would wait behind all of them. This processor gives every other update
the same few slots, and lets a pre-checkout query run at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

# PTB's own gate, which every update passes: wide open, since PTB has already made a task per update;
# the real limit is the slots below.
_UNGATED = 1_000_000


class PaymentsFirst(BaseUpdateProcessor):
    def __init__(self, concurrent_updates: int) -> None:
        super().__init__(_UNGATED)
        self._slots = asyncio.Semaphore(concurrent_updates)

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        if isinstance(update, Update) and update.pre_checkout_query is not None:
            await coroutine
            return
        async with self._slots:
            await coroutine

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
