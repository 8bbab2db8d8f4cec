"""The composition root: everything the bot needs, built once from the settings, in one readable place."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from bot.config import Settings
from bot.core import database
from bot.core.catalogue import available_models, choose_default
from bot.core.credits import CreditPolicy
from bot.core.events import JobObserver
from bot.core.jobs.worker import Worker, WorkerLimits
from bot.core.providers.automatic1111 import Automatic1111Provider
from bot.core.providers.base import ImageProvider
from bot.core.providers.gateway import GatewayProvider
from bot.core.providers.gemini import GeminiProvider
from bot.core.providers.offline import OfflineProvider
from bot.core.providers.openai_images import OpenAIImagesProvider
from bot.core.providers.runner import ProviderRunner, RetryPolicy
from bot.core.service import GenerationService, RequestPolicy
from bot.core.storage.base import ImageStore
from bot.core.storage.local import LocalStore
from bot.core.storage.s3 import S3Store
from bot.observability import HealthServer

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    store: ImageStore
    providers: dict[str, ImageProvider]
    worker: Worker
    service: GenerationService
    observers: dict[str, JobObserver] = field(default_factory=dict)
    health: HealthServer | None = None

    def register(self, observer: JobObserver) -> None:
        """A front end registers before start(): the worker then takes jobs for its platform."""
        self.observers[observer.platform] = observer

    async def start(self) -> None:
        if self.settings.metrics_port is not None:
            self.health = HealthServer(self.pool, self.settings.metrics_host, self.settings.metrics_port)
            await self.health.start()
        await self.worker.recover()
        self.worker.start()
        # What start-up built lives as long as the process: move it out of the garbage collector's sight,
        # so full collections under a burst stay short (a 150 ms pause was measured without this).
        gc.collect()
        gc.freeze()


def build_providers(settings: Settings) -> dict[str, ImageProvider]:
    # Every provider is built; one without credentials or a base URL reports itself unavailable, and
    # its models are then hidden from the catalogue (catalogue.available_models).
    return {
        "offline": OfflineProvider(settings.offline_delay_seconds),
        "openai": OpenAIImagesProvider(settings.openai_api_key, settings.openai_base_url),
        "gateway": GatewayProvider(settings.gateway_api_key, settings.gateway_base_url),
        "gemini": GeminiProvider(settings.gemini_api_key, settings.gemini_base_url),
        "automatic1111": Automatic1111Provider(
            settings.a1111_base_url,
            username=settings.a1111_username,
            password=settings.a1111_password,
            max_concurrency=settings.a1111_max_concurrency,
            denoising_strength=settings.a1111_denoising_strength,
        ),
    }


def build_store(settings: Settings) -> ImageStore:
    if settings.storage_backend == "s3":
        assert settings.s3_bucket is not None
        return S3Store(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            public_base_url=settings.s3_public_base_url,
            presign_seconds=settings.s3_presign_seconds,
        )
    return LocalStore(settings.local_images_dir)


# The worker's own connections: its claims and results never queue behind a burst of incoming requests.
WORKER_POOL_SIZE = 4


@asynccontextmanager
async def database_dsn(settings: Settings) -> AsyncIterator[str]:
    """DATABASE_URL, or the embedded Postgres (started here, stopped on exit)."""
    if settings.database_url is not None:
        yield await database.reachable(settings.database_url.get_secret_value(), settings.db_connect_timeout_seconds)
        return
    embedded = database.EmbeddedPostgres(settings.pg_data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool on the configured database."""
    async with database_dsn(settings) as dsn:
        pool = await database.create_pool(dsn, settings.db_pool_max_size)
        try:
            await database.migrate(pool)
            yield pool
        finally:
            await pool.close()


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    pool: asyncpg.Pool | None = None,
    extra_providers: Mapping[str, ImageProvider] | None = None,
    worker_pool: asyncpg.Pool | None = None,
) -> AsyncIterator[Runtime]:
    """Build the runtime. With `pool` given (tests), the caller owns the database (and the worker shares
    that pool unless `worker_pool` is given). `extra_providers` adds or replaces providers by name (tests
    and the benchmark plug in stand-ins this way)."""
    if pool is None:
        async with database_dsn(settings) as dsn:
            own_pool = await database.create_pool(dsn, settings.db_pool_max_size)
            own_worker_pool = await database.create_pool(dsn, WORKER_POOL_SIZE)
            try:
                await database.migrate(own_pool)
                async with open_runtime(settings, own_pool, extra_providers, own_worker_pool) as runtime:
                    yield runtime
            finally:
                await own_worker_pool.close()
                await own_pool.close()
        return

    store = build_store(settings)
    providers = {**build_providers(settings), **(extra_providers or {})}
    models = available_models(settings.models, providers)
    observers: dict[str, JobObserver] = {}
    runner = ProviderRunner(
        settings.max_provider_calls,
        RetryPolicy(max_retries=settings.provider_max_retries, timeout=settings.provider_timeout_seconds),
    )
    worker = Worker(
        worker_pool or pool,
        store,
        providers,
        models,
        runner,
        observers,
        WorkerLimits(
            max_jobs=settings.max_jobs_in_flight,
            per_user_jobs=settings.per_user_jobs_in_flight,
            lease_seconds=settings.job_lease_seconds,
            poll_seconds=settings.worker_poll_seconds,
            job_deadline_seconds=settings.job_deadline_seconds,
        ),
    )
    service = GenerationService(
        pool,
        worker,
        models,
        choose_default(models, settings.default_model),
        CreditPolicy(settings.credits_enabled, settings.starting_credits, frozenset(settings.admin_ids)),
        observers,
        RequestPolicy(
            prompt_max_chars=settings.prompt_max_chars,
            banned_words=tuple(settings.banned_words),
            per_user_queued_limit=settings.per_user_queued_limit,
            requests_per_minute=settings.requests_per_minute,
        ),
    )
    runtime = Runtime(settings, pool, store, providers, worker, service, observers)
    try:
        yield runtime
    finally:
        await worker.stop(settings.shutdown_grace_seconds)
        if runtime.health is not None:
            await runtime.health.close()
        for provider in providers.values():
            await provider.aclose()
        await store.aclose()


def stop_on_sigterm() -> asyncio.Event:
    """SIGTERM (what process managers send) and SIGINT set the event: stop taking work, then shut down."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
