"""How the Telegram front end processes the updates it receives: what Telegram waits on with a deadline
goes first, everything else takes its turn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

# PTB takes its own semaphore before handing an update over; set out of reach so that it never holds back
# a deadline update, the bound that matters is `others` below.
UNBOUNDED = 1 << 30


def has_deadline(update: object) -> bool:
    """A callback query (the client spins until answered, and a late answer fails) or a pre-checkout
    query (a payment fails unless answered within seconds)."""
    return isinstance(update, Update) and (
        update.callback_query is not None or update.pre_checkout_query is not None
    )


class DeadlinesFirst(BaseUpdateProcessor):
    """Updates with a deadline run as soon as they arrive; the rest (commands, prompts), at most `others`
    at a time in order of arrival, so that a burst of /imagine can't make a button press wait its turn."""

    def __init__(self, others: int) -> None:
        super().__init__(max_concurrent_updates=UNBOUNDED)
        self._others = asyncio.Semaphore(others)

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        if has_deadline(update):
            await coroutine
            return
        async with self._others:
            await coroutine

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass
