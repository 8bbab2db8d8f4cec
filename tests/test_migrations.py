"""Migrations: each applied once, in order, also when two processes start at the same moment."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from bot.core import database
from tests.conftest import with_database


async def test_migrate_twice_applies_nothing_new(pool: asyncpg.Pool) -> None:
    # The test database is a clone of a migrated template.
    assert await database.migrate(pool) == []
    versions = [r["version"] for r in await pool.fetch("SELECT version FROM public.schema_migrations")]
    assert versions == [m.version for m in database.load_migrations()]


async def test_concurrent_starts_apply_each_migration_once(pg_server_dsn: str, tmp_path: Path) -> None:
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute("DROP DATABASE IF EXISTS migrate_race")
    await admin.execute("CREATE DATABASE migrate_race")
    dsn = with_database(pg_server_dsn, "migrate_race")
    # A slow extra migration widens the window in which a second process could step in.
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    for migration in database.load_migrations():
        (migrations / f"{migration.version:04d}_{migration.name}.sql").write_text(migration.sql)
    (migrations / "9999_slow.sql").write_text(
        "SELECT pg_sleep(0.3); CREATE TABLE image.race_marker (id int); INSERT INTO image.race_marker VALUES (1);"
    )
    pools = [await database.create_pool(dsn, 2) for _ in range(3)]
    try:
        results = await asyncio.gather(*(database.migrate(p, migrations) for p in pools))
        assert sorted(len(r) for r in results) == [0, 0, len(database.load_migrations()) + 1]
        assert await pools[0].fetchval("SELECT count(*) FROM image.race_marker") == 1
    finally:
        for p in pools:
            await p.close()
        await admin.execute("DROP DATABASE migrate_race WITH (FORCE)")
        await admin.close()


async def test_a_failing_migration_leaves_nothing_behind(pool: asyncpg.Pool, tmp_path: Path) -> None:
    (tmp_path / "9000_broken.sql").write_text("CREATE TABLE image.half_done (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await database.migrate(pool, tmp_path)
    assert await pool.fetchval("SELECT to_regclass('image.half_done')") is None
    assert await pool.fetchval("SELECT count(*) FROM public.schema_migrations WHERE version = 9000") == 0
