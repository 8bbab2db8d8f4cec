"""What every front end (console, Discord, Telegram) is to the rest of the bot: built by bot.bootstrap
from the settings and the core's services, started and stopped by the launcher."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bot.config import Settings
from bot.core.account_service import AccountService
from bot.core.events import JobObserver
from bot.core.service import GenerationService


class StartFailed(RuntimeError):
    """A front end could not start for a reason the operator can fix (a missing or rejected token, the
    platform unreachable): one line for the terminal, no traceback."""


class FrontEnd(Protocol):
    @property
    def observer(self) -> JobObserver:
        """Shows this platform's jobs: the worker takes jobs only for platforms that have one."""
        ...

    async def start(self) -> None:
        """Connect and take requests. Raises StartFailed."""
        ...

    async def stop_taking_work(self) -> None:
        """No new requests; jobs already accepted can still be shown."""
        ...

    async def close(self) -> None:
        """Release everything (after the worker has stopped)."""
        ...


FrontEndFactory = Callable[[Settings, GenerationService, AccountService], FrontEnd]
