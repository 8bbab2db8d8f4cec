"""A fake of OpenAI's Images API on 127.0.0.1: it records every request and answers from a script.

Tests queue responses with `FakeOpenAI.queue(...)`; once the queue is empty, every request succeeds
with `n` PNG images of the requested size, so parallel calls need no script at all. A request with
`stream: true` is answered as server-sent events: `partial_images` partial-image events, then one
completed event per image, named as the openai package types them (image_gen_*/image_edit_* events)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image

DEFAULT_SIZE = (64, 64)


@dataclass(frozen=True)
class UploadedFile:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)

    def param(self, name: str) -> Any:
        """A request parameter whichever way it came (JSON body or multipart form field)."""
        return self.json.get(name) if self.json is not None else self.fields.get(name)


@dataclass(frozen=True)
class ScriptedResponse:
    status: int = 200
    # None means "the success body": `images` PNGs (or the request's n) of the request's size.
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    images: int | None = None
    content_type: str = "application/json"
    # For a streamed request: these events (each JSON object sent as one SSE event) instead of success.
    events: tuple[dict[str, Any], ...] | None = None


def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def success(images: int | None = None, delay: float = 0.0) -> ScriptedResponse:
    return ScriptedResponse(images=images, delay=delay)


def streamed(*events: dict[str, Any]) -> ScriptedResponse:
    return ScriptedResponse(events=events)


def stream_event(kind: str, **fields: Any) -> dict[str, Any]:
    """One streaming event: `kind` is e.g. "image_generation.partial_image"."""
    return {
        "type": kind,
        "b64_json": base64.b64encode(png_bytes(*DEFAULT_SIZE)).decode(),
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": "png",
        "quality": "low",
        "size": "1024x1024",
        **fields,
    }


def slow(delay: float) -> ScriptedResponse:
    return ScriptedResponse(delay=delay)


def rate_limited(retry_after: str = "0") -> ScriptedResponse:
    body = error_body(
        "Rate limit reached for gpt-image-2 in organization org-test on images per minute (IPM): "
        "Limit 5, Used 5, Requested 1. Please try again in 12s.",
        "requests",
        "rate_limit_exceeded",
    )
    return ScriptedResponse(status=429, body=body, headers={"Retry-After": retry_after})


def server_error() -> ScriptedResponse:
    message = "The server had an error while processing your request. Sorry about that!"
    body = error_body(message, "server_error", None)
    return ScriptedResponse(status=500, body=body)


def moderation_blocked() -> ScriptedResponse:
    # The shape OpenAI sends for gpt-image models when its safety system refuses a prompt.
    body = {
        "error": {
            "message": "Your request was rejected by the safety system. If you believe this is an error, "
            "contact us at help.openai.com and include the request ID req_0123456789abcdef. "
            "safety_violations=[violence].",
            "type": "image_generation_user_error",
            "param": None,
            "code": "moderation_blocked",
        }
    }
    return ScriptedResponse(status=400, body=json.dumps(body).encode())


def bad_request(message: str = "Invalid value: '999x999'.", param: str = "size") -> ScriptedResponse:
    body = error_body(message, "invalid_request_error", "invalid_value", param)
    return ScriptedResponse(status=400, body=body)


def unauthorized(shown_key: str) -> ScriptedResponse:
    # OpenAI echoes the key it was given (masked for long keys); this fake echoes it whole, the worst case.
    message = (
        f"Incorrect API key provided: {shown_key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return ScriptedResponse(status=401, body=error_body(message, "invalid_request_error", "invalid_api_key"))


def malformed(kind: str = "not_json") -> ScriptedResponse:
    if kind == "not_json":
        return ScriptedResponse(body=b"<html>502 Bad Gateway</html>", content_type="text/html")
    payloads: dict[str, dict[str, Any]] = {
        "no_data": {"created": 1},
        "bad_base64": {"created": 1, "data": [{"b64_json": "%%%not base64%%%"}]},
        "not_image": {"created": 1, "data": [{"b64_json": base64.b64encode(b"hello").decode()}]},
    }
    return ScriptedResponse(body=json.dumps(payloads[kind]).encode())


class FakeOpenAI:
    def __init__(self, api_key: str | None = None) -> None:
        # When set, requests without "Bearer <api_key>" get OpenAI's 401, as the real service does.
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._script: deque[ScriptedResponse] = deque()

    def queue(self, *responses: ScriptedResponse) -> None:
        self._script.extend(responses)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._handle)
        app.router.add_post("/v1/images/edits", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            recorded = await _record(request)
            self.requests.append(recorded)
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                given = request.headers.get("Authorization", "").removeprefix("Bearer ")
                return _respond(recorded, unauthorized(given))
            scripted = self._script.popleft() if self._script else ScriptedResponse()
            if scripted.delay:
                await asyncio.sleep(scripted.delay)
            if scripted.status == 200 and str(recorded.param("stream")).lower() == "true":
                return await _stream(request, recorded, scripted)
            return _respond(recorded, scripted)
        finally:
            self.in_flight -= 1


async def _record(request: web.Request) -> RecordedRequest:
    recorded = RecordedRequest(path=request.path, headers=dict(request.headers))
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.filename is not None:
                upload = UploadedFile(part.filename, part.headers.get("Content-Type"), await part.read())
                recorded.files.setdefault(part.name, []).append(upload)
            else:
                recorded.fields[part.name] = await part.text()
    else:
        recorded.json = await request.json()
    return recorded


def _respond(recorded: RecordedRequest, scripted: ScriptedResponse) -> web.Response:
    body = scripted.body if scripted.body is not None else _success_body(recorded, scripted.images)
    return web.Response(
        status=scripted.status, body=body, headers=scripted.headers, content_type=scripted.content_type
    )


async def _stream(request: web.Request, recorded: RecordedRequest, scripted: ScriptedResponse) -> web.StreamResponse:
    events = scripted.events if scripted.events is not None else _stream_success(recorded)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for event in events:
        await response.write(f"event: {event.get('type', 'error')}\ndata: {json.dumps(event)}\n\n".encode())
    await response.write_eof()
    return response


def _stream_success(recorded: RecordedRequest) -> list[dict[str, Any]]:
    prefix = "image_edit" if recorded.path.endswith("/edits") else "image_generation"
    size = str(recorded.param("size") or "")
    width, _, height = size.partition("x")
    dimensions = (int(width), int(height)) if width.isdigit() and height.isdigit() else DEFAULT_SIZE
    events = []
    for index in range(int(recorded.param("partial_images") or 0)):
        # Partial images get brighter as they go, so a test can tell them apart.
        partial = base64.b64encode(png_bytes(*DEFAULT_SIZE, color=(60 * (index + 1), 0, 0))).decode()
        events.append(stream_event(f"{prefix}.partial_image", b64_json=partial, partial_image_index=index))
    usage = {"input_tokens": 12, "input_tokens_details": {"image_tokens": 0, "text_tokens": 12},
             "output_tokens": 272, "total_tokens": 284}
    for index in range(int(recorded.param("n") or 1)):
        final = base64.b64encode(png_bytes(*dimensions, color=(10 * index, 100, 200))).decode()
        events.append(stream_event(f"{prefix}.completed", b64_json=final, size=size, usage=usage))
    return events


def _success_body(recorded: RecordedRequest, images: int | None) -> bytes:
    count = images if images is not None else int(recorded.param("n") or 1)
    size = str(recorded.param("size") or "")
    width, _, height = size.partition("x")
    dimensions = (int(width), int(height)) if width.isdigit() and height.isdigit() else DEFAULT_SIZE
    # A different colour per image lets a test tell the images of one response apart.
    data = [
        {"b64_json": base64.b64encode(png_bytes(*dimensions, color=(10 * i, 100, 200))).decode()}
        for i in range(count)
    ]
    usage = {
        "input_tokens": 12,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 12},
        "output_tokens": 272 * count,
        "total_tokens": 12 + 272 * count,
    }
    return json.dumps({"created": int(time.time()), "data": data, "usage": usage}).encode()


@asynccontextmanager
async def fake_openai_server(api_key: str | None = None) -> AsyncIterator[FakeOpenAI]:
    """Serve a FakeOpenAI on 127.0.0.1 at a free port; `base_url` ends in /v1 like OpenAI's."""
    fake = FakeOpenAI(api_key)
    # handler_cancellation: a client that gave up (a timeout test) ends its slow handler at once.
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}/v1"
    try:
        yield fake
    finally:
        # The short shutdown_timeout above: a test may leave a deliberately slow request hanging.
        await runner.cleanup()
