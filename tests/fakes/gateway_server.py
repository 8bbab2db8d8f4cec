"""A fake AI gateway on 127.0.0.1 speaking OpenRouter's OpenAI-compatible chat completions with image
output: `POST /api/v1/chat/completions` answering `message.images` (or `delta.images` when streamed),
and OpenRouter's error bodies `{"error": {"code", "message", "metadata"}}`."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.http_server import FakeServer, Scripted, png_bytes, respond, serve, stream_events

# Gemini image sizes per aspect ratio, as OpenRouter documents them for image_config.aspect_ratio.
SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
}
TEXT = "Here is a lighthouse at dusk."
USAGE = {"prompt_tokens": 14, "completion_tokens": 1299, "total_tokens": 1313}


def error(status: int, message: str, metadata: dict[str, Any] | None = None, **headers: str) -> Scripted:
    body: dict[str, Any] = {"error": {"code": status, "message": message}}
    if metadata is not None:
        body["error"]["metadata"] = metadata
    return Scripted(status=status, body=body, headers=dict(headers))


def rate_limited(retry_after: str = "0") -> Scripted:
    return error(429, "Rate limit exceeded: limit_rpm/google/gemini-2.5-flash-image", **{"Retry-After": retry_after})


def server_error(status: int = 502) -> Scripted:
    metadata = {"provider_name": "Google", "raw": "upstream said: internal error"}
    return error(status, "Provider returned error", metadata)


def moderation_flagged() -> Scripted:
    metadata = {
        "reasons": ["violence"],
        "flagged_input": "a gory...",
        "provider_name": "OpenAI",
        "model_slug": "openai/gpt-5-image",
    }
    return error(
        403, 'openai/gpt-5-image requires moderation on OpenAI. Your input was flagged for "violence".', metadata
    )


def insufficient_credits() -> Scripted:
    return error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")


def content_filtered() -> Scripted:
    """A 200 whose choice was stopped by the upstream's image safety filter: no image."""
    return Scripted(body=completion([choice(None, [], finish="content_filter", native="IMAGE_SAFETY")]))


def text_only(text: str = "I can draw that! What style would you like?") -> Scripted:
    return Scripted(body=completion([choice(text, [])]))


def slow(delay: float) -> Scripted:
    return Scripted(delay=delay)


def streamed(*chunks: Any) -> Scripted:
    return Scripted(events=chunks)


def image_item(width: int, height: int, color: tuple[int, int, int]) -> dict[str, Any]:
    encoded = base64.b64encode(png_bytes(width, height, color)).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}, "index": 0}


def choice(
    text: str | None, images: list[dict[str, Any]], finish: str = "stop", native: str = "STOP", index: int = 0
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "reasoning": None}
    if images:
        message["images"] = images
    return {
        "logprobs": None,
        "finish_reason": finish,
        "native_finish_reason": native,
        "index": index,
        "message": message,
    }


def completion(choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "gen-1764000000-abc",
        "provider": "Google",
        "model": "google/gemini-2.5-flash-image",
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": choices,
        "usage": USAGE,
    }


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice_: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if finish:
        choice_["native_finish_reason"] = "STOP"
    return {
        "id": "gen-1764000000-abc",
        "provider": "Google",
        "model": "google/gemini-2.5-flash-image",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "choices": [choice_],
        **extra,
    }


class FakeGateway(FakeServer):
    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/chat/completions", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        async with self.tracking():
            recorded = await self.record(request)
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if self.api_key is not None and given != self.api_key:
                # The worst case for the logs: the wrong key echoed back whole.
                return respond(Scripted(status=401), {"error": {"code": 401, "message": f"Invalid key {given}"}})
            scripted = self.next_script()
            if scripted.delay:
                await asyncio.sleep(scripted.delay)
            body = recorded.json or {}
            if scripted.status == 200 and body.get("stream") and scripted.body is None:
                chunks = list(scripted.events) if scripted.events is not None else self._chunks(body)
                return await stream_events(request, chunks, comment="OPENROUTER PROCESSING")
            return respond(scripted, scripted.body if scripted.body is not None else self._completion(body))

    def _images(self, body: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """One image per choice; a different colour per choice lets a test tell them apart."""
        ratio = (body.get("image_config") or {}).get("aspect_ratio", "1:1")
        width, height = SIZES[ratio]
        return [[image_item(width, height, (10 * i, 100, 200))] for i in range(int(body.get("n") or 1))]

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return completion([choice(TEXT, images, index=i) for i, images in enumerate(self._images(body))])

    def _chunks(self, body: dict[str, Any]) -> list[Any]:
        [images] = self._images(body)[:1]
        return [
            chunk({"role": "assistant", "content": "Here is "}),
            chunk({"content": "a lighthouse at dusk."}),
            chunk({"role": "assistant", "content": "", "images": images}),
            chunk({"content": ""}, finish="stop", usage=USAGE),
        ]


@asynccontextmanager
async def fake_gateway_server(api_key: str | None = None) -> AsyncIterator[FakeGateway]:
    """Serve a FakeGateway; `base_url` ends in /api/v1 like OpenRouter's."""
    async with serve(FakeGateway(api_key), "/api/v1") as fake:
        yield fake
