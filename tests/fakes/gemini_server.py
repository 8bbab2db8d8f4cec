"""A fake of Google's Gemini API on 127.0.0.1: `POST /v1beta/models/{model}:generateContent` keyed by
the `x-goog-api-key` header, answering `candidates[].content.parts[].inlineData` images, and Google's
error bodies `{"error": {"code", "message", "status", "details"}}` (a wrong key is a 400 there)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.fakes.http_server import FakeServer, Scripted, png_bytes, respond, serve

# What Gemini 2.5 Flash Image makes per imageConfig.aspectRatio.
SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
}
USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}


def google_error(
    status: int, state: str, message: str, details: list[dict[str, Any]] | None = None, **headers: str
) -> Scripted:
    body = {"error": {"code": status, "message": message, "status": state, "details": details or []}}
    return Scripted(status=status, body=body, headers=dict(headers))


def invalid_key() -> Scripted:
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ]
    return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details)


def rate_limited(retry_delay: str = "0s") -> Scripted:
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generate_requests"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ]
    return google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        details,
    )


def overloaded() -> Scripted:
    return google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def bad_argument(message: str = "Unsupported aspect ratio.") -> Scripted:
    return google_error(400, "INVALID_ARGUMENT", message)


def prompt_blocked(reason: str = "PROHIBITED_CONTENT") -> Scripted:
    return Scripted(
        body={
            "promptFeedback": {"blockReason": reason},
            "usageMetadata": USAGE,
            "modelVersion": "gemini-2.5-flash-image",
        }
    )


def finished_without_image(reason: str, text: str | None = None) -> Scripted:
    candidate: dict[str, Any] = {"finishReason": reason, "index": 0}
    if text is not None:
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
    return Scripted(body={"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": "gemini-2.5-flash-image"})


def slow(delay: float) -> Scripted:
    return Scripted(delay=delay)


def inline_image(width: int, height: int, color: tuple[int, int, int]) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png_bytes(width, height, color)).decode()}}


class FakeGemini(FakeServer):
    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{target}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        async with self.tracking():
            recorded = await self.record(request)
            model, _, method = request.match_info["target"].partition(":")
            if method != "generateContent":
                return respond(Scripted(status=404), {"error": {"code": 404, "message": "Not found"}})
            if self.api_key is not None and request.headers.get("x-goog-api-key") != self.api_key:
                scripted = invalid_key()
                return respond(scripted, scripted.body)
            scripted = self.next_script()
            if scripted.delay:
                await asyncio.sleep(scripted.delay)
            return respond(
                scripted, scripted.body if scripted.body is not None else self._success(model, recorded.json)
            )

    def _success(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        config = body.get("generationConfig") or {}
        width, height = SIZES[(config.get("imageConfig") or {}).get("aspectRatio", "1:1")]
        candidates = [
            {
                "content": {
                    "parts": [{"text": "Here is your lighthouse."}, inline_image(width, height, (10 * i, 100, 200))],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": i,
            }
            for i in range(int(config.get("candidateCount") or 1))
        ]
        return {"candidates": candidates, "usageMetadata": USAGE, "modelVersion": model, "responseId": "resp-123"}


@asynccontextmanager
async def fake_gemini_server(api_key: str | None = None) -> AsyncIterator[FakeGemini]:
    """Serve a FakeGemini; `base_url` ends in /v1beta like Google's."""
    async with serve(FakeGemini(api_key), "/v1beta") as fake:
        yield fake
