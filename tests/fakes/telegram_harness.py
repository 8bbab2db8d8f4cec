"""The whole bot (runtime + worker + Telegram front end) running against a FakeTelegram, as `run` starts it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from bot.adapters.telegram.delivery import ProgressTiming
from bot.adapters.telegram.frontend import TelegramFrontEnd
from bot.runtime import Runtime
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
    async with runtime_factory(**telegram_settings(fake, **overrides)) as runtime:
        frontend = TelegramFrontEnd(
            runtime.settings, runtime.service, poll_timeout=1.0, history_page_size=history_page_size, timing=timing
        )
        runtime.register(frontend.observer)
        await frontend.start()
        await runtime.start()
        try:
            yield RunningBot(runtime, frontend)
        finally:
            # The launcher's order: no new updates, let running jobs finish, then close.
            await frontend.stop_taking_work()
            await runtime.worker.stop(runtime.settings.shutdown_grace_seconds)
            await frontend.close()
