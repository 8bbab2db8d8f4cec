"""OpenAI's Images API (gpt-image models): POST /images/generations, or /images/edits for variations.

One call here is one HTTP request; splitting, retries and the overall timeout belong to the runner."""

from __future__ import annotations

import base64
import binascii
import io
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from bot.config import ModelSpec
from bot.core.errors import (
    ContentRefused,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from bot.core.providers.base import (
    GeneratedImage,
    ImageProvider,
    InputImage,
    PreviewCallback,
    ProviderCall,
    ratio_parts,
    size_for_pixels,
)

REFUSED_MESSAGE = "The image service declined this prompt under its content policy."
AUTH_MESSAGE = "The image service rejected the bot's credentials. The operator has been told."
BAD_REQUEST_MESSAGE = "The image service couldn't accept this request."
UNAVAILABLE_MESSAGE = "The image service isn't answering properly right now. Please try again later."
RATE_LIMITED_MESSAGE = "The image service is busy right now. Please try again in a moment."

REFUSAL_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# Only these model families take any WxH; older gpt-image models accept three fixed sizes.
FLEXIBLE_SIZE_PREFIXES = ("gpt-image-2",)
FIXED_SIZES = {"square": (1024, 1024), "landscape": (1536, 1024), "portrait": (1024, 1536)}
TARGET_PIXELS = 1024 * 1024
SIZE_MULTIPLE = 16
MAX_RATIO = 3.0
# Generous: the runner's own timeout is what normally ends a slow call; this only stops a dead socket.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=15.0)
# OpenAI echoes (part of) a wrong key in its 401 message; keep anything key-shaped out of logs.
KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]+")
MAX_DETAIL_CHARS = 500


class OpenAIImagesProvider(ImageProvider):
    name = "openai"

    def __init__(
        self, api_key: SecretStr | None, base_url: str, http: httpx.AsyncClient | None = None
    ) -> None:
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._owns_http = http is None
        # Our own client is made on first use: a provider without a key never opens one.
        self._http = http

    def available(self) -> bool:
        return bool(self._api_key and self._api_key.get_secret_value())

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        rw, rh = ratio_parts(aspect_ratio)
        if not model.provider_model.startswith(FLEXIBLE_SIZE_PREFIXES):
            return _fixed_size(rw, rh)
        # Clamp to the API's 1:3..3:1 window before sizing, so odd catalogue ratios still work.
        ratio = min(max(rw / rh, 1 / MAX_RATIO), MAX_RATIO)
        return size_for_pixels(_ratio_string(ratio, rw, rh), TARGET_PIXELS, SIZE_MULTIPLE)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        # on_preview is unused: streamed partial images are a later feature.
        if not self.available():
            raise ProviderAuthError(AUTH_MESSAGE, detail="no OpenAI API key configured")
        try:
            response = await self._send(call)
        except httpx.TimeoutException as error:
            detail = f"timeout: {type(error).__name__}"
            raise ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=detail) from None
        except httpx.TransportError as error:
            detail = self._redact(f"transport error: {type(error).__name__}: {error}")
            raise ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=detail) from None
        if response.status_code != 200:
            raise self._error_for(response)
        return self._parse(response, call)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _send(self, call: ProviderCall) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else {}
        # Catalogue options go first so that they can never override the core fields.
        fields: dict[str, Any] = {
            **call.model.options,
            "model": call.model.provider_model,
            "prompt": call.prompt,
            "n": call.n,
            "size": f"{call.width}x{call.height}",
            "safety_identifier": call.safety_identifier,
        }
        http = self._client()
        if call.input_image is None:
            return await http.post(f"{self._base_url}/images/generations", json=fields, headers=headers)
        return await http.post(
            f"{self._base_url}/images/edits",
            data={key: _form_value(value) for key, value in fields.items()},
            files=[("image[]", _upload(call.input_image))],
            headers=headers,
        )

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        return self._http

    def _error_for(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        code, message = _error_fields(response)
        detail = self._redact(f"HTTP {status} code={code or '-'}: {message or response.text}")
        if status == 400 and code in REFUSAL_CODES:
            return ContentRefused(REFUSED_MESSAGE, detail=detail)
        if status in (401, 403):
            return ProviderAuthError(AUTH_MESSAGE, detail=detail)
        if status == 429:
            return RateLimited(RATE_LIMITED_MESSAGE, detail=detail, retry_after=_retry_after(response))
        # 408 and 409 are transient on OpenAI's side too; its own SDK retries them like a 5xx.
        if status >= 500 or status in (408, 409):
            return ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=detail)
        # 400/404/422 and anything else unexpected: retrying the same request would fail the same way.
        return ProviderBadRequest(BAD_REQUEST_MESSAGE, detail=detail)

    def _parse(self, response: httpx.Response, call: ProviderCall) -> list[GeneratedImage]:
        try:
            body = response.json()
        except ValueError:
            raise _malformed("response is not JSON") from None
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise _malformed("response has no data list")
        metadata = {"created": body.get("created"), "model": call.model.provider_model}
        if isinstance(body.get("usage"), dict):
            # Token usage is per call, not per image: each image of the call carries the same record.
            metadata["usage"] = body["usage"]
        return [_decode(item, index, metadata) for index, item in enumerate(items)]

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key.get_secret_value():
            text = text.replace(self._api_key.get_secret_value(), "[redacted]")
        return KEY_PATTERN.sub("sk-[redacted]", text)[:MAX_DETAIL_CHARS]


def _decode(item: object, index: int, metadata: dict[str, Any]) -> GeneratedImage:
    if not isinstance(item, dict):
        raise _malformed(f"data[{index}] is not an object")
    encoded = item.get("b64_json")
    if not isinstance(encoded, str) or not encoded:
        raise _malformed(f"data[{index}] has no b64_json")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"data[{index}].b64_json is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime_type = image.get_format_mimetype() or "application/octet-stream"
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
        raise _malformed(f"data[{index}] is not a readable image") from None
    extra = {"revised_prompt": item["revised_prompt"]} if item.get("revised_prompt") else {}
    return GeneratedImage(data, mime_type, width, height, seed=None, metadata={**metadata, **extra})


def _malformed(why: str) -> ProviderUnavailable:
    return ProviderUnavailable(UNAVAILABLE_MESSAGE, detail=f"malformed response: {why}")


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """The `code` and `message` of OpenAI's `{"error": {...}}` body, when it has one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None, None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else None)


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's own), `Retry-After` seconds, or an HTTP date."""
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _fixed_size(rw: int, rh: int) -> tuple[int, int]:
    if rw == rh:
        return FIXED_SIZES["square"]
    return FIXED_SIZES["landscape"] if rw > rh else FIXED_SIZES["portrait"]


def _ratio_string(ratio: float, rw: int, rh: int) -> str:
    if ratio == rw / rh:
        return f"{rw}:{rh}"
    return "3:1" if ratio > 1 else "1:3"


def _form_value(value: object) -> str:
    # Multipart fields are text; OpenAI expects JSON-style booleans.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _upload(image: InputImage) -> tuple[str, bytes, str]:
    extension = image.mime_type.partition("/")[2] or "png"
    return f"input.{extension}", image.data, image.mime_type
