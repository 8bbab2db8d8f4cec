"""The embedded Postgres after its bot is SIGKILLed (real processes): the next start finds the server left
running on the data directory and reuses it, and a clean exit stops it; no server is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def bot_env(data_dir: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_TOKEN", "_API_KEY")) and k != "DATABASE_URL"}
    return {**clean, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}


def servers_on(pg_data: Path) -> list[psutil.Process]:
    """The postgres processes serving this data directory."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "postgres" in (process.info["name"] or "") and str(pg_data.resolve()) in cmdline:
            found.append(process)
    return found


def wait_until(predicate, within: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value


def test_a_sigkilled_bots_postgres_is_reused_then_stopped(tmp_path: Path) -> None:
    pg_data = tmp_path / "postgres"
    handles = pg_data / ".handle_pids.json"
    errors = (tmp_path / "console.err").open("w")
    console = subprocess.Popen(
        [sys.executable, "-m", "bot", "console"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=errors, cwd=tmp_path, env=bot_env(tmp_path),
    )

    def using_the_server() -> bool:
        assert console.poll() is None, (tmp_path / "console.err").read_text()
        return handles.exists() and console.pid in json.loads(handles.read_text())

    try:
        # Slow under load: the wheel starts servers one at a time, machine-wide.
        wait_until(using_the_server, within=180)
        wait_until(lambda: servers_on(pg_data))
    finally:
        console.send_signal(signal.SIGKILL)
        console.wait(10)
        errors.close()
    assert servers_on(pg_data), "the server outlives the SIGKILL (what the next start must deal with)"
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "bot", "migrate"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env=bot_env(tmp_path),
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "database up to date" in migrate.stdout
        wait_until(lambda: not servers_on(pg_data), within=15)
        assert json.loads(handles.read_text()) == []
    finally:
        for orphan in servers_on(pg_data):  # a failing run leaves nothing behind either
            orphan.terminate()
