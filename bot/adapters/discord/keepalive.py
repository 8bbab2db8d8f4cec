"""A small HTTP/1.1 client for one thing: POSTing interaction acknowledgements with the least work between
the gateway event and the bytes on the wire. The request is written on a kept-alive connection in the same
step that received the event. aiohttp (a task per request, several event-loop turns and more CPU each)
puts the acknowledgements of a burst of hundreds of interactions far behind the events (bench/burst.py).

HTTP framing is h11's (a sans-I/O HTTP/1.1 implementation, already here as httpx's); only the connection
handling is ours: one request in flight per connection, idle connections kept for reuse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

# Idle connections older than this are closed rather than reused: a server's keep-alive timeout may
# have closed them already (a request written on such a connection is lost).
IDLE_SECONDS = 50.0
# How often the warm connections are looked after, and how many are opened at once (a connect storm
# overflows the server's accept queue, and lost SYNs are retried after a whole second).
WARM_EVERY_SECONDS = 10.0
OPEN_AT_ONCE = 16
READ_CHUNK = 65536


class KeepAliveError(Exception):
    """The request may or may not have reached the server (connection refused, reset, timed out)."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when empty). Raises ValueError when it isn't JSON."""
        return json.loads(self.body) if self.body else None


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.http = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.idle_since

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and self.age() < IDLE_SECONDS

    def send(self, request: h11.Request, body: bytes) -> None:
        """Writes at once (no await): the kernel has the bytes when this returns."""
        http = self.http
        self.writer.write(http.send(request) + http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))

    async def response(self) -> Response:
        status = 0
        chunks: list[bytes] = []
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(READ_CHUNK))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise KeepAliveError("the server closed the connection before answering")

    def reusable(self) -> bool:
        if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
            return False
        self.http.start_next_cycle()
        self.idle_since = time.monotonic()
        return True

    def close(self) -> None:
        self.writer.close()


class KeepAlivePool:
    """POSTs JSON to one origin. `post` writes the request before it returns when an idle connection is at
    hand; otherwise the returned task opens one first."""

    def __init__(self, base_url: str, user_agent: str, *, timeout: float = 3.0, warm: int = 0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc
        self.user_agent = user_agent
        self.timeout = timeout
        self.warm = warm
        self._idle: list[_Connection] = []
        self._closed = False
        self._keeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Keep `warm` connections open from now on, so that a burst finds them ready."""
        if self.warm and self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_warm(), name="discord-ack-connections")

    async def _keep_warm(self) -> None:
        while not self._closed:
            # Replaced before they are old enough to be refused (a request on them would be lost).
            for connection in [c for c in self._idle if c.age() > IDLE_SECONDS - 2 * WARM_EVERY_SECONDS]:
                self._idle.remove(connection)
                connection.close()
            missing = self.warm - len(self._idle)
            while missing > 0 and not self._closed:
                batch = min(missing, OPEN_AT_ONCE)
                opened = await asyncio.gather(*(self._open() for _ in range(batch)), return_exceptions=True)
                for result in opened:
                    if isinstance(result, _Connection):
                        self._idle.insert(0, result)  # behind the recently used ones
                if any(isinstance(c, BaseException) for c in opened):
                    break  # unreachable for now: try again next round
                missing -= batch
            await asyncio.sleep(WARM_EVERY_SECONDS)

    def post(self, path: str, payload: Any) -> asyncio.Task[Response]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        request = h11.Request(
            method="POST",
            target=self.prefix + path,
            headers=[
                ("Host", self.authority),
                ("User-Agent", self.user_agent),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        connection = self._take_idle()
        if connection is not None:
            connection.send(request, body)
        return asyncio.get_running_loop().create_task(self._exchange(connection, request, body))

    async def _exchange(self, connection: _Connection | None, request: h11.Request, body: bytes) -> Response:
        try:
            async with asyncio.timeout(self.timeout):
                if connection is None:
                    connection = await self._open()
                    connection.send(request, body)
                response = await connection.response()
        except (OSError, TimeoutError, h11.ProtocolError, KeepAliveError) as error:
            if connection is not None:
                connection.close()
            raise KeepAliveError(f"{type(error).__name__}: {error}") from error
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        if not self._closed and connection.reusable():
            self._idle.append(connection)
        else:
            connection.close()
        return response

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the least likely to have timed out
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
        )
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
            with contextlib.suppress(OSError):
                await connection.writer.wait_closed()
