"""The whole bot (runtime + worker + Telegram front end) running against a FakeTelegram, as `run` starts it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from bot.adapters.telegram.delivery import ProgressTiming
from bot.adapters.telegram.frontend import TelegramFrontEnd
from bot.bootstrap import Runtime
from bot.config import Settings
from bot.core.account_service import AccountService
from bot.core.service import GenerationService
from tests.fakes.telegram_server import FakeTelegram

# Fast indicators so tests see them without waiting seconds.
FAST_TIMING = ProgressTiming(chat_action_every=0.2, status_edit_every=0.5, preview_every=0.2, status_wait=2.0)


class RuntimeFactory(Protocol):
    def __call__(self, **overrides: Any) -> AbstractAsyncContextManager[Runtime]: ...


@dataclass
class RunningBot:
    runtime: Runtime
    frontend: TelegramFrontEnd


def telegram_settings(fake: FakeTelegram, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "telegram_token": fake.token,
        "telegram_base_url": fake.base_url,
        "telegram_base_file_url": fake.base_file_url,
    }
    values.update(overrides)
    return values


@asynccontextmanager
async def running_bot(
    runtime_factory: RuntimeFactory,
    fake: FakeTelegram,
    *,
    timing: ProgressTiming = FAST_TIMING,
    history_page_size: int = 3,
    **overrides: Any,
) -> AsyncIterator[RunningBot]:
    def telegram(settings: Settings, service: GenerationService, accounts: AccountService) -> TelegramFrontEnd:
        return TelegramFrontEnd(
            settings, service, accounts, poll_timeout=1, history_page_size=history_page_size, timing=timing
        )

    async with runtime_factory(front_ends=[telegram], **telegram_settings(fake, **overrides)) as runtime:
        await runtime.start()
        [frontend] = runtime.front_ends
        assert isinstance(frontend, TelegramFrontEnd)
        yield RunningBot(runtime, frontend)
        # The launcher's order: no new updates, let running jobs finish; bootstrap then closes.
        await runtime.stop_taking_work()
