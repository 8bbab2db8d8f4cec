"""Shared fixtures: a real Postgres (DATABASE_URL, or the embedded one), a fresh migrated database per
test (cloned from a template, so it is fast), and the bot's runtime built on it."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.bootstrap import Runtime, bootstrap
from bot.config import Settings
from bot.core import database

pytest_plugins = ["tests.plugins.s3", "tests.plugins.providers"]

TEMPLATE_DB = "imagebot_test_template"
# A user's balance is their account's: add "WHERE platform_user_id = ...".
USER_BALANCE = "SELECT a.balance FROM image.users u JOIN image.accounts a ON a.id = u.account_id"


def with_database(dsn: str, name: str) -> str:
    """The same server, another database."""
    base, _, query = dsn.partition("?")
    scheme, _, rest = base.partition("://")
    authority, _, _ = rest.partition("/")
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def pg_server_dsn() -> Any:
    """The server's admin DSN: DATABASE_URL if set, else an embedded Postgres in a temp directory."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with tempfile.TemporaryDirectory(prefix="imagebot-pg-") as root:
        server = database.EmbeddedPostgres(Path(root) / "pgdata")
        yield server.start()
        server.stop()


@pytest.fixture(scope="session")
async def template_dsn(pg_server_dsn: str) -> str:
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    dsn = with_database(pg_server_dsn, TEMPLATE_DB)
    pool = await database.create_pool(dsn, 2)
    await database.migrate(pool)
    await pool.close()
    return dsn


@pytest.fixture
async def db_dsn(pg_server_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database of its own for each test."""
    name = f"t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await admin.close()
    yield with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await database.create_pool(db_dsn, 20)
    yield pool
    await pool.close()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: never the developer's .env or environment tokens."""
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "worker_poll_seconds": 0.05,
        "provider_max_retries": 1,
        "starting_credits": 20,
        "shutdown_grace_seconds": 2.0,
        "requests_per_minute": 1000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


RuntimeFactory = Callable[..., AbstractAsyncContextManager[Runtime]]


@pytest.fixture
def runtime_factory(pool: asyncpg.Pool, tmp_path: Path) -> RuntimeFactory:
    """`async with runtime_factory(**settings) as rt:` builds the whole bot on the test database, with the
    front ends made by `front_ends` (bootstrap's factories). Register other observers, then
    `await rt.start()` to run the front ends and the worker."""

    @asynccontextmanager
    async def factory(
        extra_providers: dict[str, Any] | None = None, front_ends: Sequence[Any] = (), **overrides: Any
    ) -> AsyncIterator[Runtime]:
        settings = make_settings(tmp_path, **overrides)
        async with bootstrap(settings, front_ends, pool=pool, extra_providers=extra_providers) as runtime:
            yield runtime

    return factory


async def wait_for(predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` (sync or async) is truthy; fail the test on timeout."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
