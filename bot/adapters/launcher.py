"""`run`: every platform front end whose token is configured, in one asyncio loop."""

from __future__ import annotations

import logging
import sys

from bot.config import Settings
from bot.runtime import open_runtime, stop_on_sigterm

log = logging.getLogger(__name__)


async def run_front_ends(settings: Settings) -> int:
    if settings.discord_token is None and settings.telegram_token is None:
        print(
            "No front end configured: set DISCORD_TOKEN and/or TELEGRAM_TOKEN "
            "(or try the offline console: python -m bot console).",
            file=sys.stderr,
        )
        return 1
    stop = stop_on_sigterm()
    async with open_runtime(settings) as runtime:
        front_ends = []
        if settings.discord_token is not None:
            from bot.adapters.discord.frontend import DiscordFrontEnd

            front_ends.append(DiscordFrontEnd(settings, runtime.service))
        if settings.telegram_token is not None:
            from bot.adapters.telegram.frontend import TelegramFrontEnd

            front_ends.append(TelegramFrontEnd(settings, runtime.service))
        for front_end in front_ends:
            runtime.register(front_end.observer)
        started = []
        try:
            for front_end in front_ends:
                try:
                    await front_end.start()
                except RuntimeError as error:  # e.g. a token the platform rejects: one line, no traceback
                    print(str(error), file=sys.stderr)
                    return 1
                started.append(front_end)
            await runtime.start()
            log.info("running: %s", ", ".join(f.observer.platform for f in front_ends))
            await stop.wait()
            log.info("shutting down: no new work, finishing what runs")
            for front_end in started:
                await front_end.stop_taking_work()
            await runtime.worker.stop(settings.shutdown_grace_seconds)
        finally:
            for front_end in started:
                await front_end.close()
    return 0
