"""What the HTTP image providers share, so that each maps its service's errors in one place and the
rest is written once: an owned httpx client, status-code → typed-error defaults, Retry-After,
secrets kept out of logs, image decoding and checking, server-sent events, and safe previews."""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from bot.core.errors import (
    ContentRefused,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from bot.core.providers.base import ImageProvider, PreviewCallback

log = logging.getLogger(__name__)

REFUSED_MESSAGE = "The image service declined this prompt under its content policy."
AUTH_MESSAGE = "The image service rejected the bot's credentials. The operator has been told."
BAD_REQUEST_MESSAGE = "The image service couldn't accept this request."
UNAVAILABLE_MESSAGE = "The image service isn't answering properly right now. Please try again later."
RATE_LIMITED_MESSAGE = "The image service is busy right now. Please try again in a moment."
NO_IMAGE_MESSAGE = "The model finished without making an image. Try rephrasing the prompt."

# Generous: the runner's own timeout is what normally ends a slow call; this only stops a dead socket.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=15.0)
# Services echo (part of) a wrong key in their error messages; keep anything key-shaped out of logs:
# OpenAI and OpenRouter keys (sk-..., sk-or-v1-...) and Google API keys (AIza...).
KEY_PATTERNS = (
    (re.compile(r"sk-[A-Za-z0-9_\-*]+"), "sk-[redacted]"),
    (re.compile(r"AIza[A-Za-z0-9_\-]{10,}"), "AIza[redacted]"),
)
MAX_DETAIL_CHARS = 500


class HttpProvider(ImageProvider):
    """A provider that talks HTTP through one httpx client, its own unless one is passed in (tests)."""

    def __init__(
        self, base_url: str, http: httpx.AsyncClient | None = None, limits: httpx.Limits | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._owns_http = http is None
        # Our own client is made on first use: a provider without credentials never opens one.
        self._http = http
        self._limits = limits

    def _secrets(self) -> Iterable[str]:
        """The configured secrets, to be scrubbed from every detail that reaches a log."""
        return ()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            if self._limits is None:
                self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
            else:
                self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=self._limits)
        return self._http

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "[redacted]")
        for pattern, replacement in KEY_PATTERNS:
            text = pattern.sub(replacement, text)
        return text[:MAX_DETAIL_CHARS]

    @asynccontextmanager
    async def _transport_errors(self) -> AsyncIterator[None]:
        """httpx's own failures (no answer, a dropped or stalled connection) as the retryable error."""
        try:
            yield
        except httpx.TimeoutException as error:
            raise ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=f"timeout: {type(error).__name__}") from None
        except httpx.TransportError as error:
            detail = self._redact(f"transport error: {type(error).__name__}: {error}")
            raise ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=detail) from None


class KeyedHttpProvider(HttpProvider):
    """An HTTP provider enabled by an API key: unavailable without one, and the key scrubbed from logs."""

    def __init__(self, api_key: SecretStr | None, base_url: str, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, http)
        self._api_key = api_key

    def available(self) -> bool:
        return bool(self._api_key and self._api_key.get_secret_value())

    def _secrets(self) -> Iterable[str]:
        return (self._api_key.get_secret_value(),) if self._api_key else ()


def error_for_status(status: int, detail: str, retry_after: float | None = None) -> ProviderError:
    """The default meaning of an HTTP status; each provider first picks out its own special cases."""
    if status in (401, 403):
        return ProviderAuthError(AUTH_MESSAGE, detail=detail)
    if status == 429:
        return RateLimited(RATE_LIMITED_MESSAGE, detail=detail, retry_after=retry_after)
    # 408 and 409 are transient on OpenAI's side too; its own SDK retries them like a 5xx.
    if status >= 500 or status in (408, 409):
        return ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=detail)
    # 400/404/422 and anything else unexpected: retrying the same request would fail the same way.
    return ProviderBadRequest(BAD_REQUEST_MESSAGE, detail=detail)


def refused(detail: str) -> ContentRefused:
    return ContentRefused(REFUSED_MESSAGE, detail=detail)


def malformed(why: str) -> ProviderUnavailable:
    # Retryable: a truncated or garbled answer is usually a proxy or a passing fault, not our request.
    return ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=f"malformed response: {why}")


def as_object(value: object) -> dict[str, Any]:
    """A JSON object from an answer, or an empty one when the field is missing or of another type."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """A JSON array from an answer, or an empty one when the field is missing or of another type."""
    return value if isinstance(value, list) else []


def json_body(response: httpx.Response) -> Any:
    """The parsed body, or None when it isn't JSON (an HTML error page from a proxy, say)."""
    try:
        return response.json()
    except ValueError:
        return None


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's own), `Retry-After` seconds, or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when: datetime = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    mime_type: str
    width: int
    height: int


def inspect_image(data: bytes, where: str) -> DecodedImage:
    """Check that the bytes are a picture and read its real type and size (never trust a label)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime_type = image.get_format_mimetype() or "application/octet-stream"
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        raise malformed(f"{where} is not a readable image") from None
    return DecodedImage(data, mime_type, width, height)


def decode_base64_image(encoded: object, where: str) -> DecodedImage:
    if not isinstance(encoded, str) or not encoded:
        raise malformed(f"{where} has no image data")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise malformed(f"{where} is not valid base64") from None
    return inspect_image(data, where)


def decode_data_url(url: object, where: str) -> DecodedImage:
    """A `data:image/...;base64,...` URL, as gateways return images."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise malformed(f"{where} is not a data URL")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise malformed(f"{where} is not a base64 data URL")
    return decode_base64_image(payload, where)


def data_url(data: bytes, mime_type: str) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str


async def server_sent_events(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """The events of a text/event-stream body. Comments (`: keep-alive`, OpenRouter's
    `: OPENROUTER PROCESSING`) and ids are skipped; multi-line data is joined as the spec says."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield ServerSentEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield ServerSentEvent(event or "message", "\n".join(data))


async def send_preview(on_preview: PreviewCallback | None, image: DecodedImage) -> None:
    """Hand a partial image to the front end. A preview is a courtesy: its failure must not fail the job."""
    if on_preview is None:
        return
    try:
        await on_preview(image.data, image.mime_type)
    except Exception:
        log.warning("preview callback failed; generation continues", exc_info=True)
