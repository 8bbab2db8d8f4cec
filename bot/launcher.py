"""`run`: every platform front end whose token is configured, in one asyncio loop, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bot.adapters.frontend import FrontEnd, FrontEndFactory, StartFailed
from bot.bootstrap import bootstrap
from bot.config import Settings
from bot.core.service import GenerationService

log = logging.getLogger(__name__)


def discord_front_end(settings: Settings, service: GenerationService) -> FrontEnd:
    from bot.adapters.discord.frontend import DiscordFrontEnd  # imported only when configured

    return DiscordFrontEnd(settings, service)


def telegram_front_end(settings: Settings, service: GenerationService) -> FrontEnd:
    from bot.adapters.telegram.frontend import TelegramFrontEnd

    return TelegramFrontEnd(settings, service)


def configured_front_ends(settings: Settings) -> list[FrontEndFactory]:
    front_ends: list[FrontEndFactory] = []
    if settings.discord_token is not None:
        front_ends.append(discord_front_end)
    if settings.telegram_token is not None:
        front_ends.append(telegram_front_end)
    return front_ends


async def run_front_ends(settings: Settings) -> int:
    front_ends = configured_front_ends(settings)
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
            await runtime.start()
        except StartFailed as error:  # e.g. a token the platform rejects: one line, no traceback
            print(str(error), file=sys.stderr)
            return 1
        log.info("running: %s", ", ".join(runtime.observers))
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
