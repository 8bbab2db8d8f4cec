"""Start-up with the database out of reach (a real `python -m bot migrate`): it waits, one log line per
attempt, and either carries on once the database answers or exits with one line, never a traceback."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.tcp_proxy import TcpProxy


async def migrate(tmp_path: Path, dsn: str, wait_seconds: float) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "migrate",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**clean, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING", "DATABASE_URL": dsn,
             "DB_CONNECT_TIMEOUT_SECONDS": str(wait_seconds)},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_database_that_never_answers_is_one_line_and_a_failed_exit(tmp_path: Path, unused_port: int) -> None:
    code, _out, err = await migrate(tmp_path, f"postgresql://postgres@127.0.0.1:{unused_port}/bot", 1.5)
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) >= 2 and all("waiting for the database" in line for line in lines)
    assert "giving up" in lines[-1] and "giving up" not in " ".join(lines[:-1])


async def test_a_database_coming_up_during_the_wait_is_used(tmp_path: Path, db_dsn: str, unused_port: int) -> None:
    proxy = TcpProxy.for_dsn(db_dsn)
    proxy.port = unused_port  # not listening yet: connections are refused

    async def come_up_later() -> None:
        await asyncio.sleep(1.5)
        await proxy.start()

    try:
        (code, out, err), _ = await asyncio.gather(migrate(tmp_path, proxy.dsn(db_dsn), 30), come_up_later())
    finally:
        await proxy.close()
    assert code == 0, err
    assert "database up to date" in out
    assert "waiting for the database" in err and "Traceback" not in err
