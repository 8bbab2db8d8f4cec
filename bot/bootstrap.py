"""The composition root: the whole bot built from the settings, in one readable place. Every entry point
(bot.launcher's `run`, the CLI's console and operator commands, the tests) calls `bootstrap`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from bot.adapters.frontend import FrontEnd, FrontEndFactory
from bot.config import Settings
from bot.core import database
from bot.core.account_service import AccountService
from bot.core.catalogue import available_models, choose_default
from bot.core.credits import CreditPolicy
from bot.core.events import JobObserver
from bot.core.jobs.scheduler import WorkerLimits
from bot.core.jobs.worker import Worker
from bot.core.providers.automatic1111 import Automatic1111Provider
from bot.core.providers.base import ImageProvider
from bot.core.providers.gateway import GatewayProvider
from bot.core.providers.gemini import GeminiProvider
from bot.core.providers.limits import ProviderLimits
from bot.core.providers.offline import OfflineProvider
from bot.core.providers.openai_images import OpenAIImagesProvider
from bot.core.providers.runner import ProviderRunner, RetryPolicy
from bot.core.service import GenerationService, RequestPolicy
from bot.core.storage.base import ImageStore
from bot.core.storage.local import LocalStore
from bot.core.storage.s3 import S3Store
from bot.observability import HealthServer

log = logging.getLogger(__name__)


PLATFORMS = ("discord", "telegram")
ROLES = (*PLATFORMS, "worker")


@dataclass(frozen=True)
class Roles:
    """What one process of a deployment does (`run --only`): receive the updates of some platforms, run
    the jobs, or both. Every process that runs jobs delivers for every configured platform, through the
    platforms' REST APIs where it receives no updates."""

    receive: frozenset[str] = frozenset(PLATFORMS)
    jobs: bool = True

    @classmethod
    def only(cls, names: Iterable[str]) -> Roles:
        """From `--only` values (none: everything). Raises ValueError naming an unknown role."""
        chosen = {name.strip() for name in names if name.strip()}
        if not chosen:
            return cls()
        unknown = sorted(chosen - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r} (choose from {', '.join(ROLES)})")
        return cls(frozenset(chosen & set(PLATFORMS)), "worker" in chosen)

    def describe(self) -> str:
        return ", ".join([*sorted(self.receive), *(["worker"] if self.jobs else [])])


@dataclass
class Runtime:
    """The bot, built: the core's parts and the front ends that show its jobs."""

    settings: Settings
    pool: asyncpg.Pool
    store: ImageStore
    providers: dict[str, ImageProvider]
    worker: Worker
    service: GenerationService
    accounts: AccountService
    front_ends: list[FrontEnd]
    observers: dict[str, JobObserver]
    health: HealthServer | None = None
    _started: list[FrontEnd] = field(default_factory=list)

    def register(self, observer: JobObserver) -> None:
        """An observer that is not a front end (tests, benchmarks), before start(): the worker then takes
        jobs for its platform."""
        self.observers[observer.platform] = observer

    async def start_front_ends(self) -> None:
        """Each front end connects; a StartFailed (e.g. a token the platform rejects) propagates."""
        for front_end in self.front_ends:
            if front_end not in self._started:
                await front_end.start()
                self._started.append(front_end)

    async def start(self, *, jobs: bool = True) -> None:
        """The front ends, then the health endpoint and the worker. Without `jobs` (a front-end-only
        process) the worker only listens for records written elsewhere: other processes run the jobs."""
        await self.start_front_ends()
        if self.settings.metrics_port is not None and self.health is None:
            self.health = HealthServer(self.pool, self.settings.metrics_host, self.settings.metrics_port)
            await self.health.start()
        if jobs:
            await self.worker.recover()
            self.worker.start()
        else:
            self.worker.start_barrier()
        # What start-up built lives as long as the process: move it out of the garbage collector's sight,
        # so full collections under a burst stay short.
        gc.collect()
        gc.freeze()

    async def stop_taking_work(self) -> None:
        """No new requests anywhere; running jobs get their grace period, the rest are refunded."""
        for front_end in self._started:
            await front_end.stop_taking_work()
        await self.worker.stop(self.settings.shutdown_grace_seconds)

    async def close(self) -> None:
        await self.stop_taking_work()
        for front_end in self._started:
            await front_end.close()
        self._started.clear()
        if self.health is not None:
            await self.health.close()
        for provider in self.providers.values():
            await provider.aclose()
        await self.store.aclose()


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


# The worker's own connections: its claims and results never queue behind a burst of incoming requests
# (three of them held for good: the record barrier's and the job signals' LISTEN and, with a provider
# ceiling, the provider slots).
WORKER_POOL_SIZE = 7


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


def build_core(
    settings: Settings,
    pool: asyncpg.Pool,
    worker_pool: asyncpg.Pool,
    store: ImageStore,
    providers: Mapping[str, ImageProvider],
    observers: Mapping[str, JobObserver],
) -> tuple[Worker, GenerationService, AccountService]:
    """The core's services, from the settings."""
    models = available_models(settings.models, providers)
    limits = ProviderLimits(settings.max_provider_calls, settings.provider_ceilings, worker_pool)
    runner = ProviderRunner(
        settings.max_provider_calls,
        RetryPolicy(max_retries=settings.provider_max_retries, timeout=settings.provider_timeout_seconds),
        limits,
    )
    worker = Worker(
        worker_pool,
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
    credit_policy = CreditPolicy(settings.credits_enabled, settings.starting_credits, frozenset(settings.admin_ids))
    service = GenerationService(
        pool,
        worker,
        models,
        choose_default(models, settings.default_model),
        credit_policy,
        observers,
        RequestPolicy(
            prompt_max_chars=settings.prompt_max_chars,
            banned_words=tuple(settings.banned_words),
            per_user_queued_limit=settings.per_user_queued_limit,
            requests_per_minute=settings.requests_per_minute,
        ),
        store=store,
    )
    return worker, service, AccountService(pool, credit_policy, service.model_choices())


@asynccontextmanager
async def open_pools(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """A migrated pool for requests, and the worker's own (see WORKER_POOL_SIZE)."""
    async with database_dsn(settings) as dsn:
        pool = await database.create_pool(dsn, settings.db_pool_max_size)
        try:
            worker_pool = await database.create_pool(dsn, WORKER_POOL_SIZE)
            try:
                await database.migrate(pool)
                yield pool, worker_pool
            finally:
                await worker_pool.close()
        finally:
            await pool.close()


@asynccontextmanager
async def bootstrap(
    settings: Settings,
    front_ends: Sequence[FrontEndFactory] = (),
    *,
    pool: asyncpg.Pool | None = None,
    extra_providers: Mapping[str, ImageProvider] | None = None,
) -> AsyncIterator[Runtime]:
    """The whole bot, built from the settings; every entry point starts here. With `pool` given (tests),
    the caller owns the database and the worker shares that pool. `extra_providers` adds or replaces
    providers by name (tests and the benchmark plug in stand-ins this way). Closed on exit: front ends
    stop taking work, running jobs get their grace period, then everything is released."""
    async with contextlib.AsyncExitStack() as stack:
        worker_pool = pool
        if pool is None:
            pool, worker_pool = await stack.enter_async_context(open_pools(settings))
        assert pool is not None and worker_pool is not None
        store = build_store(settings)
        providers = {**build_providers(settings), **(extra_providers or {})}
        # The core and the front ends need each other: the core is built with the observers' mapping, the
        # front ends with the core's services, and the mapping is filled here, before anything runs.
        observers: dict[str, JobObserver] = {}
        worker, service, accounts = build_core(settings, pool, worker_pool, store, providers, observers)
        built = [make(settings, service, accounts) for make in front_ends]
        observers.update({front_end.observer.platform: front_end.observer for front_end in built})
        runtime = Runtime(settings, pool, store, providers, worker, service, accounts, built, observers)
        try:
            yield runtime
        finally:
            await runtime.close()


