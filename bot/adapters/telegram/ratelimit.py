"""Flood control: when Telegram answers 429 with retry_after, wait that long and send again.

Plugged into python-telegram-bot as its rate limiter, so every API call (messages, edits, chat actions,
callback answers) gets the same treatment without each call site knowing. The pause is per chat, as
Telegram's limits are: one busy group doesn't hold back replies to everyone else."""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter, TelegramError
from telegram.ext import BaseRateLimiter
from telegram.warnings import PTBDeprecationWarning

from bot.core.metrics import PLATFORM_ERRORS

log = logging.getLogger(__name__)

JSONResult = bool | dict[str, Any] | list[dict[str, Any]]


def retry_after_seconds(error: RetryAfter) -> float:
    # PTB 22 returns an int or a timedelta depending on PTB_TIMEDELTA, with a deprecation warning for int.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


class FloodWaitLimiter(BaseRateLimiter[int]):
    """Reacts to 429s only (no pre-emptive throttling). `rate_limit_args` may override max_retries."""

    def __init__(self, max_retries: int = 3, max_wait: float = 60.0) -> None:
        self.max_retries = max_retries
        # A longer wait than this is not worth holding a handler for: the error goes up instead (a final
        # delivery is then retried by the worker later).
        self.max_wait = max_wait
        self._paused_until: dict[str, float] = {}

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        self._paused_until.clear()

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, JSONResult]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> JSONResult:
        chat = str(data.get("chat_id", "*"))
        retries = self.max_retries if rate_limit_args is None else rate_limit_args
        loop = asyncio.get_running_loop()
        for attempt in range(retries + 1):
            # Everyone sending to a chat that is in a flood wait waits too, instead of earning more 429s.
            wait = self._paused_until.get(chat, 0.0) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif chat in self._paused_until:
                del self._paused_until[chat]  # over: don't keep an entry for every chat ever paused
            try:
                return await callback(*args, **kwargs)
            except TelegramError as error:
                # Every Bot API call passes here: the one place to count errors for the operator.
                PLATFORM_ERRORS.labels("telegram", type(error).__name__).inc()
                if not isinstance(error, RetryAfter):
                    raise
                delay = retry_after_seconds(error)
                if attempt == retries or delay > self.max_wait:
                    raise
                log.info("telegram: %s to chat %s hit flood control, retrying in %.1f s", endpoint, chat, delay)
                until = loop.time() + delay + 0.05
                self._paused_until[chat] = max(self._paused_until.get(chat, 0.0), until)
        raise AssertionError("unreachable")  # the loop either returns or raises
