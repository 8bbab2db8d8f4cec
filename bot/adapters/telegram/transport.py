"""How the bot's Bot API calls travel: over aiohttp, through PTB's public `BaseRequest` extension point.

PTB's default transport is httpx, which costs about four times the CPU per call (PTB's own work included)
that aiohttp does: under a crowd, every status message, chat action and photo waits for that CPU on the one
event loop (bench/README.md). aiohttp is here already (discord.py's transport).

Timeouts map onto aiohttp's: `pool_timeout` is `connect` (aiohttp's wait for a pooled connection, which
includes opening one), `connect_timeout` is `sock_connect`, `read_timeout` is `sock_read`. aiohttp has no
write timeout: a stalled upload ends by the read timeout instead."""

from __future__ import annotations

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

DEFAULT_CONNECT_SECONDS = 5.0


class AiohttpRequest(BaseRequest):
    def __init__(
        self,
        connection_pool_size: int,
        read_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        connect_timeout: float | None = DEFAULT_CONNECT_SECONDS,
    ) -> None:
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._pool_timeout = pool_timeout
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        # Made here, on the running loop; again after a shutdown (PTB may initialize a bot twice).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size),
                trust_env=True,  # HTTPS_PROXY and friends, as PTB's httpx transport reads them
            )

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: float | object | None = BaseRequest.DEFAULT_NONE,
        write_timeout: float | object | None = BaseRequest.DEFAULT_NONE,
        connect_timeout: float | object | None = BaseRequest.DEFAULT_NONE,
        pool_timeout: float | object | None = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized")
        timeout = aiohttp.ClientTimeout(
            connect=_chosen(pool_timeout, self._pool_timeout),
            sock_connect=_chosen(connect_timeout, self._connect_timeout),
            sock_read=_chosen(read_timeout, self._read_timeout),
        )
        try:
            async with self._session.request(
                method, url, data=_body(request_data), timeout=timeout, headers={"User-Agent": self.USER_AGENT}
            ) as response:
                return response.status, await response.read()
        except aiohttp.ConnectionTimeoutError as error:
            # Waiting for a pooled connection (or opening one) timed out: nothing was sent.
            raise TimedOut("Pool timeout: the request was not sent to Telegram") from error
        except TimeoutError as error:
            raise TimedOut from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{type(error).__name__}: {error}") from error


def _chosen(value: float | object | None, default: float | None) -> float | None:
    if value is BaseRequest.DEFAULT_NONE:
        return default
    return value if isinstance(value, int | float) else None


def _body(request_data: RequestData | None) -> aiohttp.FormData | dict[str, str] | None:
    """Form-encoded parameters; multipart when files go along (as PTB's own transport sends them)."""
    if request_data is None:
        return None
    if not request_data.contains_files:
        return request_data.json_parameters
    form = aiohttp.FormData()
    for name, value in request_data.json_parameters.items():
        form.add_field(name, value)
    for name, (filename, content, mime_type) in request_data.multipart_data.items():
        form.add_field(name, content, filename=filename, content_type=mime_type)
    return form
