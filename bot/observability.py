"""The operator's health endpoint and Prometheus metrics (off unless METRICS_PORT is set)."""

from __future__ import annotations

import logging

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.core.metrics import JOBS_BY_STATUS, QUEUE_DEPTH, REGISTRY

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "partial", "failed", "cancelled")


class HealthServer:
    def __init__(self, pool: asyncpg.Pool, host: str, port: int) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("health and metrics on http://%s:%d/healthz and /metrics", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def health(self, request: web.Request) -> web.Response:
        try:
            await self.pool.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            return web.json_response({"status": "unhealthy", "database": str(type(error).__name__)}, status=503)
        return web.json_response({"status": "ok", "database": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            rows = await self.pool.fetch("SELECT status, count(*) AS n FROM image.generations GROUP BY status")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            rows = []
        counts = {r["status"]: r["n"] for r in rows}
        for status in STATUSES:
            JOBS_BY_STATUS.labels(status).set(counts.get(status, 0))
        QUEUE_DEPTH.set(counts.get("queued", 0))
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
