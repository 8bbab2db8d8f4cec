"""`./dev bench`: measure what users feel. Prints a table and writes JSON (bench/results/latest.json).

Everything runs on this machine: the embedded Postgres (or DATABASE_URL), the local store and moto's S3
server on 127.0.0.1, a stand-in provider, and the platform stand-ins the adapter tests use."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import core_scenarios
from bot.core import database

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(prog="./dev bench")
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument("--only", nargs="*", default=None,
                        help="scenarios: overhead edit throughput burst burst30 startup fleet "
                        "(default: all but fleet)")
    parser.add_argument("--fleet-kill", nargs="+", default=["worker"], choices=["worker", "shard", "webhook"],
                        help="fleet: the process SIGKILLed mid-burst, one run each (default: worker)")
    parser.add_argument("--profile", action="store_true",
                        help="write pyinstrument profiles of the throughput run and of the bot in the burst")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2))
    print(f"\nwritten: {args.json}")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    wanted = set(args.only or ["overhead", "edit", "throughput", "burst", "burst30", "startup"])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imagebot-bench-") as root_name:
        root = Path(root_name)
        embedded = None
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            embedded = database.EmbeddedPostgres(root / "pg")
            dsn = await asyncio.to_thread(embedded.start)
        try:
            rows += await _scenarios(root, dsn, wanted, args)
        finally:
            if embedded is not None:
                embedded.stop()
    return rows


async def _scenarios(root: Path, dsn: str, wanted: set[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    counter = 0

    async def fresh_db() -> str:
        nonlocal counter
        counter += 1
        return await _fresh_database(dsn, f"bench_{counter}_{os.getpid()}")

    if "overhead" in wanted:
        # In a process of its own: in this one, moto's CPU would be counted as the bot's added latency.
        server, port = _start_s3_server()
        s3 = {"s3_endpoint_url": f"http://127.0.0.1:{port}", "s3_bucket": "bench",
              "s3_access_key_id": "bench", "s3_secret_access_key": "bench"}
        _create_bucket(s3)
        jobs = 10 if args.quick else 40
        try:
            for store in ("local", "s3"):
                for count in (1, 4):
                    rows.append(await core_scenarios.overhead(root / f"o{store}{count}", await fresh_db(),
                                                              count, store, s3, jobs))
        finally:
            server.terminate()
            server.wait(10)
    if "edit" in wanted:
        rows.append(await core_scenarios.edit(root / "e", await fresh_db(), 10 if args.quick else 40))
    if "throughput" in wanted:
        jobs = 400 if args.quick else 2000
        profile = RESULTS / "throughput-profile.txt" if args.profile else None
        if profile:
            profile.parent.mkdir(parents=True, exist_ok=True)
        rows.append(await core_scenarios.throughput(root / "t", await fresh_db(), jobs, 100, profile))
    if "burst" in wanted:
        from bench import burst

        profile = RESULTS / "burst-profile.txt" if args.profile else None
        concurrent = await burst.burst(root / "b", await fresh_db(), fifo=False, quick=args.quick, profile=profile)
        rows.append(concurrent)
        # The FIFO comparison gets the wall-clock time the concurrent burst took, plus a margin.
        took = concurrent["time_to_last_s"]
        budget = max(took * 1.1, took + 2.0) if isinstance(took, float) else None
        rows.append(await burst.burst(root / "bfifo", await fresh_db(), fifo=True, quick=args.quick, budget_s=budget))
    if "burst30" in wanted:
        from bench import burst30

        rows.append(await burst30.burst30(root / "b30", await fresh_db()))
    if "fleet" in wanted:
        from bench import fleet

        for kill in args.fleet_kill:
            rows.append(await fleet.fleet(root / f"f{kill}", await fresh_db(), kill, args.quick))
    if "startup" in wanted:
        rows.append(await asyncio.to_thread(core_scenarios.startup_and_idle, root / "s", await fresh_db()))
    return rows


async def _fresh_database(server_dsn: str, name: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    base, _, query = server_dsn.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def _start_s3_server() -> tuple[subprocess.Popen[bytes], int]:
    """moto's S3 server on 127.0.0.1, its request log discarded; returns once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return server, port
        time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto's S3 server did not start within 30 s")


def _create_bucket(s3: dict[str, str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3["s3_endpoint_url"], region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket=s3["s3_bucket"])
    client.close()


def print_table(rows: list[dict[str, Any]]) -> None:
    """One table per run of rows with the same columns; nested details stay in the JSON only."""
    groups: list[list[dict[str, Any]]] = []
    for row in rows:
        if groups and _columns(groups[-1][0]) == _columns(row):
            groups[-1].append(row)
        else:
            groups.append([row])
    for group in groups:
        columns = _columns(group[0])
        widths = [max(10, len(c)) + 2 for c in columns]
        name_width = max(34, *(len(r["scenario"]) + 2 for r in group))
        print(f"\n{'scenario':<{name_width}}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
        for row in group:
            cells = []
            for column, width in zip(columns, widths, strict=True):
                value = row.get(column)
                if isinstance(value, float):
                    cells.append(f"{value:>{width}.2f}")
                else:
                    cells.append(f"{'-' if value is None else value!s:>{width}}")
            print(f"{row['scenario']:<{name_width}}" + "".join(cells))


def _columns(row: dict[str, Any]) -> list[str]:
    return [k for k, v in row.items() if k != "scenario" and not isinstance(v, dict | list)]


if __name__ == "__main__":
    main()
