"""A process of its own making images through the bot's provider runner with the deployment-wide provider
limits, built from settings as a bot process builds them: the tests start several and watch the ceiling.

`python -m tests.fakes.provider_process DSN A1111_URL CEILING CALLS`: prints READY, waits for a line on
stdin, makes CALLS one-image calls at once, prints DONE and how many images were made."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

from bot.bootstrap import build_providers
from bot.config import Settings
from bot.core import database
from bot.core.providers.limits import ProviderLimits
from bot.core.providers.runner import ProviderRunner, RetryPolicy
from tests.plugins.providers import spec


async def main(dsn: str, a1111_url: str, ceiling: int, calls: int) -> None:
    with TemporaryDirectory() as data_dir:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, data_dir=Path(data_dir), database_url=dsn, a1111_base_url=a1111_url,
            a1111_max_concurrency=ceiling,
        )
        pool = await database.create_pool(dsn, 4)
        limits = ProviderLimits(settings.max_provider_calls, settings.provider_ceilings, pool)
        runner = ProviderRunner(settings.max_provider_calls, RetryPolicy(max_retries=0, timeout=60), limits)
        provider = build_providers(settings)["automatic1111"]
        model = next(m for m in settings.models if m.provider == "automatic1111")
        small = model.model_copy(update={"max_images_per_call": 1, "options": {"base_size": 64}})
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        outcomes = await runner.run(provider, small, spec(count=calls))
        print("DONE", sum(1 for o in outcomes if o.image is not None), flush=True)
        await limits.close()
        await provider.aclose()
        await pool.close()


if __name__ == "__main__":
    dsn, url, ceiling, calls = sys.argv[1:5]
    asyncio.run(main(dsn, url, int(ceiling), int(calls)))
