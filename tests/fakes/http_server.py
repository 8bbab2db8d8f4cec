"""What the provider fakes share: a server on 127.0.0.1 that records every request and answers from a
queue of scripted responses (then succeeds), counting the requests in flight."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from PIL import Image


@functools.cache  # encoding a 1024px PNG takes ~30 ms and tests ask for the same few many times
def png_bytes(width: int, height: int, color: tuple[int, int, int] = (200, 30, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None


@dataclass(frozen=True)
class Scripted:
    """One scripted answer. `body` None means the fake's success answer for the request."""

    status: int = 200
    body: Any = None  # a JSON-able value, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"
    # For a streamed request: these chunks, each sent as one SSE `data:` event, instead of success.
    events: tuple[Any, ...] | None = None


class FakeServer:
    """Subclasses add routes in `routes` and build success answers; `answer` applies the script."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._script: deque[Scripted] = deque()

    def queue(self, *responses: Scripted) -> None:
        self._script.extend(responses)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        self.routes(app)
        return app

    async def record(self, request: web.Request) -> Recorded:
        body = await request.json() if request.can_read_body else None
        recorded = Recorded(request.method, request.path, dict(request.query), dict(request.headers), body)
        self.requests.append(recorded)
        return recorded

    def next_script(self) -> Scripted:
        return self._script.popleft() if self._script else Scripted()

    @asynccontextmanager
    async def tracking(self) -> AsyncIterator[None]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1


def respond(scripted: Scripted, body: Any) -> web.Response:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return web.Response(
        status=scripted.status, body=payload, headers=scripted.headers, content_type=scripted.content_type
    )


async def stream_events(
    request: web.Request, chunks: list[Any], *, comment: str | None = None, done: bool = True, gap: float = 0.0
) -> web.StreamResponse:
    """Answer as server-sent events: each chunk one `data:` event, then `data: [DONE]`."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    if comment:
        await response.write(f": {comment}\n\n".encode())
    for chunk in chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if gap:
            await asyncio.sleep(gap)
    if done:
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


Fake = TypeVar("Fake", bound=FakeServer)


@asynccontextmanager
async def serve(fake: Fake, path_prefix: str = "") -> AsyncIterator[Fake]:
    """Serve `fake` on 127.0.0.1 at a free port; `base_url` is that address plus `path_prefix`."""
    # handler_cancellation: a client that gave up (a timeout test) ends its slow handler at once.
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.base_url = f"http://{host}:{port}{path_prefix}"
    try:
        yield fake
    finally:
        await runner.cleanup()
