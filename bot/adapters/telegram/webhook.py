"""Webhook mode: Telegram POSTs each update to our HTTPS URL (usually through a reverse proxy that
terminates TLS and forwards to this listener).

A small aiohttp server rather than PTB's `start_webhook`, which needs tornado (the optional
`python-telegram-bot[webhooks]` extra); aiohttp is already installed. It does what PTB's does: check the
secret token Telegram echoes in a header, hand the update to the Application's queue, answer 200 at once
(Telegram resends on anything else, and the update is processed concurrently afterwards). Unlike PTB's, the
update is recorded in the inbox before the 200: Telegram forgets an update it got a 200 for, so one held
only in memory would be lost with the process."""

from __future__ import annotations

import hmac
import json
import logging
from urllib.parse import urlsplit

from aiohttp import web
from telegram import Bot, Update
from telegram.ext import Application

from bot.adapters.telegram.intake import TelegramIntake

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_UPDATE_BYTES = 1024 * 1024  # updates are small JSON documents


def webhook_path(url: str) -> str:
    return urlsplit(url).path or "/"


def derived_secret(bot_token: str) -> str:
    """A secret stable across restarts and replicas when none is configured, unguessable without the
    bot token (Telegram accepts 1–256 characters of A-Z a-z 0-9 _ -)."""
    return hmac.new(bot_token.encode(), b"imagebot-telegram-webhook", "sha256").hexdigest()


class WebhookServer:
    def __init__(
        self, application: Application, bot: Bot, intake: TelegramIntake, path: str, secret: str, listen: str,
        port: int,
    ) -> None:
        self.application = application
        self.bot = bot
        self.intake = intake
        self.path = path
        self.secret = secret.encode()
        self.listen = listen
        self.port = port
        self._runner: web.AppRunner | None = None
        self._accepting = False

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_UPDATE_BYTES)
        app.router.add_post(self.path, self._receive)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.listen, self.port).start()
        self._accepting = True
        log.info("telegram: webhook listening on %s:%d%s", self.listen, self.port, self.path)

    async def stop(self) -> None:
        self._accepting = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.secret):
            log.warning("telegram: webhook request without the right secret token from %s", request.remote)
            return web.Response(status=403)
        if not self._accepting:
            # Shutting down: Telegram keeps the update and sends it again (to us after the restart).
            return web.Response(status=503)
        try:
            data = await request.json()
        except (ValueError, json.JSONDecodeError):
            return web.Response(status=400)
        if not isinstance(data, dict):
            return web.Response(status=400)
        try:
            update = Update.de_json(data, self.bot)
        except Exception:
            log.warning("telegram: webhook body is not an Update", exc_info=True)
            return web.Response(status=400)
        try:
            await self.intake.record([update])
        except Exception:
            # Not written down: Telegram keeps the update and sends it again.
            log.warning("telegram: webhook update %s not recorded; asking Telegram to resend it", update.update_id)
            return web.Response(status=503)
        await self.application.update_queue.put(update)
        return web.Response(status=200)
