"""Running the real Discord front end against the fake Discord, on a test database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from bot.adapters.discord.frontend import DiscordFrontEnd
from bot.bootstrap import Runtime
from bot.config import Settings
from bot.core.account_service import AccountService
from bot.core.models import Generation, UserIdentity
from bot.core.service import GenerationService
from tests.fakes.discord_server import FakeDiscord, FakeInteraction, FakeMessage, point_discord_py_at


@dataclass
class RunningBot:
    runtime: Runtime
    frontend: DiscordFrontEnd
    fake: FakeDiscord

    async def balance(self, user: dict[str, Any]) -> int:
        return (await self.runtime.accounts.balance(identity(user))).balance

    async def generations(self, user: dict[str, Any]) -> list[Generation]:
        page = await self.runtime.service.history(identity(user), 0, 10)
        return [item.generation for item in page.items]

    async def start_worker(self) -> None:
        await self.runtime.start()


def identity(user: dict[str, Any]) -> UserIdentity:
    return UserIdentity("discord", user["id"], user["username"])


@asynccontextmanager
async def running_bot(
    runtime_factory: Callable[..., AbstractAsyncContextManager[Runtime]],
    fake: FakeDiscord,
    *,
    start_worker: bool = True,
    **settings: Any,
) -> AsyncIterator[RunningBot]:
    def discord_front_end(settings: Settings, service: GenerationService, accounts: AccountService) -> DiscordFrontEnd:
        # guild_ready_timeout: discord.py waits this long after READY for guilds the fake never sends.
        return DiscordFrontEnd(settings, service, accounts, guild_ready_timeout=0.01)

    async with runtime_factory(front_ends=[discord_front_end], discord_token=fake.token, **settings) as runtime:
        if start_worker:
            await runtime.start()
        else:
            await runtime.start_front_ends()
        [frontend] = runtime.front_ends
        assert isinstance(frontend, DiscordFrontEnd)
        yield RunningBot(runtime, frontend, fake)


def finished(fake: FakeDiscord, interaction: FakeInteraction) -> Callable[[], FakeMessage | None]:
    """A predicate: the interaction's message shows a final result (it has a 🔄 button)."""

    def check() -> FakeMessage | None:
        message = fake.original(interaction)
        if message is not None and not message.deleted and any(label == "🔄" for label in message.labels()):
            return message
        return None

    return check


@asynccontextmanager
async def serving_fake(monkeypatch: Any, **options: Any) -> AsyncIterator[FakeDiscord]:
    """A FakeDiscord on 127.0.0.1 with discord.py pointed at it (REST base URL and gateway URL only)."""
    fake = FakeDiscord(**options)
    await fake.start()
    point_discord_py_at(fake, monkeypatch)
    try:
        yield fake
    finally:
        await fake.stop()


def generation_id(message: FakeMessage) -> str:
    """The generation a result message shows, read from its 🔄 button."""
    return message.custom_id("🔄").rsplit(":", 1)[1]
