"""`run`: every platform front end whose token is configured, in one asyncio loop, until SIGTERM; with
`--only`, the roles this process has in a deployment of several (bootstrap.Roles)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from pydantic import SecretStr

from bot.adapters.frontend import FrontEnd, FrontEndFactory, StartFailed
from bot.bootstrap import Roles, bootstrap
from bot.config import Settings
from bot.core.account_service import AccountService
from bot.core.service import GenerationService

log = logging.getLogger(__name__)


def discord_front_end(receive: bool) -> FrontEndFactory:
    def make(settings: Settings, service: GenerationService, accounts: AccountService) -> FrontEnd:
        from bot.adapters.discord.frontend import DiscordFrontEnd  # imported only when configured

        return DiscordFrontEnd(settings, service, accounts, receive_updates=receive)

    return make


def telegram_front_end(receive: bool) -> FrontEndFactory:
    def make(settings: Settings, service: GenerationService, accounts: AccountService) -> FrontEnd:
        from bot.adapters.telegram.frontend import TelegramFrontEnd

        return TelegramFrontEnd(settings, service, accounts, receive_updates=receive)

    return make


EVERYTHING = Roles()
FRONT_ENDS = {"discord": discord_front_end, "telegram": telegram_front_end}


def tokens(settings: Settings) -> dict[str, SecretStr | None]:
    return {"discord": settings.discord_token, "telegram": settings.telegram_token}


def configured_front_ends(settings: Settings, roles: Roles = EVERYTHING) -> list[FrontEndFactory]:
    """A front end per configured platform this process receives updates of, and, where it runs jobs, one
    per other configured platform that only delivers (over the platform's REST API)."""
    return [
        FRONT_ENDS[platform](platform in roles.receive)
        for platform, token in tokens(settings).items()
        if token is not None and (platform in roles.receive or roles.jobs)
    ]


async def run_front_ends(settings: Settings, roles: Roles = EVERYTHING) -> int:
    # Without --only, whichever tokens are set; a platform asked for by name needs its token.
    configured = tokens(settings)
    missing = [f"{p.upper()}_TOKEN" for p in sorted(roles.receive) if configured[p] is None]
    if missing and roles != EVERYTHING:
        print(f"--only {', '.join(sorted(roles.receive))}: set {' and '.join(missing)}", file=sys.stderr)
        return 1
    front_ends = configured_front_ends(settings, roles)
    if not front_ends:
        print(
            "No front end configured: set DISCORD_TOKEN and/or TELEGRAM_TOKEN "
            "(or try the offline console: python -m bot console).",
            file=sys.stderr,
        )
        return 1
    stop = stop_on_sigterm()
    async with bootstrap(settings, front_ends) as runtime:
        try:
            await runtime.start(jobs=roles.jobs)
        except StartFailed as error:  # e.g. a token the platform rejects: one line, no traceback
            print(str(error), file=sys.stderr)
            return 1
        described = "all" if roles == EVERYTHING else roles.describe()
        log.info("running: %s (roles: %s)", ", ".join(runtime.observers), described)
        await stop.wait()
        log.info("shutting down: no new work, finishing what runs")
        await runtime.stop_taking_work()
    return 0


def stop_on_sigterm() -> asyncio.Event:
    """SIGTERM (what process managers send) and SIGINT set the event: stop taking work, then shut down."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
