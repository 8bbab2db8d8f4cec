"""OpenAI's Images API (gpt-image models): POST /images/generations, or /images/edits for variations.

One call here is one HTTP request; splitting, retries and the overall timeout belong to the runner.
With a `partial_images` catalogue option (1-3) and a single image per call, the request is streamed
(`stream: true`) and each `image_generation.partial_image` / `image_edit.partial_image` event becomes a
preview; the `*.completed` event carries the final image."""

from __future__ import annotations

import json
from typing import Any

import httpx

from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderAuthError, ProviderError, RateLimited
from bot.core.providers.base import (
    GeneratedImage,
    InputImage,
    PreviewCallback,
    ProviderCall,
    ratio_parts,
    size_for_pixels,
)
from bot.core.providers.http import (
    AUTH_MESSAGE,
    RATE_LIMITED_MESSAGE,
    KeyedHttpProvider,
    decode_base64_image,
    error_for_status,
    json_body,
    malformed,
    refused,
    retry_after,
    send_preview,
    server_sent_events,
)

REFUSAL_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# Only these model families take any WxH; older gpt-image models accept three fixed sizes.
FLEXIBLE_SIZE_PREFIXES = ("gpt-image-2",)
FIXED_SIZES = {"square": (1024, 1024), "landscape": (1536, 1024), "portrait": (1024, 1536)}
TARGET_PIXELS = 1024 * 1024
SIZE_MULTIPLE = 16
MAX_RATIO = 3.0
MAX_PARTIAL_IMAGES = 3
# Catalogue options this provider consumes itself rather than sending as they are.
OWN_OPTIONS = frozenset({"partial_images"})


class OpenAIImagesProvider(KeyedHttpProvider):
    name = "openai"

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        rw, rh = ratio_parts(aspect_ratio)
        if not model.provider_model.startswith(FLEXIBLE_SIZE_PREFIXES):
            return _fixed_size(rw, rh)
        # Clamp to the API's 1:3..3:1 window before sizing, so odd catalogue ratios still work.
        ratio = min(max(rw / rh, 1 / MAX_RATIO), MAX_RATIO)
        return size_for_pixels(_ratio_string(ratio, rw, rh), TARGET_PIXELS, SIZE_MULTIPLE)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        if not self.available():
            raise ProviderAuthError(AUTH_MESSAGE, detail="no OpenAI API key configured")
        partial_images = _partial_images(call) if on_preview is not None else 0
        async with self._transport_errors():
            if partial_images:
                return await self._stream(call, partial_images, on_preview)
            response = await self._client().send(self._request(call, partial_images=0))
        if response.status_code != 200:
            raise self._error_for(response)
        return self._parse(response, call)

    def _request(self, call: ProviderCall, partial_images: int) -> httpx.Request:
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else {}
        # Catalogue options go first so that they can never override the core fields.
        fields: dict[str, Any] = {
            **{key: value for key, value in call.model.options.items() if key not in OWN_OPTIONS},
            "model": call.model.provider_model,
            "prompt": call.prompt,
            "n": call.n,
            "size": f"{call.width}x{call.height}",
            "safety_identifier": call.safety_identifier,
        }
        if partial_images:
            fields.update(stream=True, partial_images=partial_images)
        http = self._client()
        if not call.input_images:
            return http.build_request("POST", f"{self._base_url}/images/generations", json=fields, headers=headers)
        return http.build_request(
            "POST",
            f"{self._base_url}/images/edits",
            data={key: _form_value(value) for key, value in fields.items()},
            files=[("image[]", _upload(image, index)) for index, image in enumerate(call.input_images)],
            headers=headers,
        )

    async def _stream(
        self, call: ProviderCall, partial_images: int, on_preview: PreviewCallback | None
    ) -> list[GeneratedImage]:
        response = await self._client().send(self._request(call, partial_images), stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error_for(response)
            return await self._read_stream(response, call, on_preview)
        finally:
            await response.aclose()

    async def _read_stream(
        self, response: httpx.Response, call: ProviderCall, on_preview: PreviewCallback | None
    ) -> list[GeneratedImage]:
        images: list[GeneratedImage] = []
        previewed: set[int] = set()
        async for sse in server_sent_events(response):
            if sse.data.startswith("[DONE]"):
                break
            try:
                event = json.loads(sse.data)
            except ValueError:
                raise malformed("stream event is not JSON") from None
            if not isinstance(event, dict):
                raise malformed("stream event is not an object")
            kind = str(event.get("type") or sse.event)
            if isinstance(event.get("error"), dict) or kind == "error":
                raise self._stream_error(event)
            if kind.endswith(".partial_image"):
                index = event.get("partial_image_index")
                # At most one preview per partial image, even if a proxy repeats an event.
                if isinstance(index, int):
                    if index in previewed:
                        continue
                    previewed.add(index)
                try:
                    preview = decode_base64_image(event.get("b64_json"), "partial image")
                except ProviderError:
                    continue  # a preview is a courtesy: a broken one is skipped, not a failed image
                await send_preview(on_preview, preview)
            elif kind.endswith(".completed"):
                decoded = decode_base64_image(event.get("b64_json"), f"completed image {len(images)}")
                metadata: dict[str, Any] = {"created": event.get("created_at"), "model": call.model.provider_model}
                if isinstance(event.get("usage"), dict):
                    metadata["usage"] = event["usage"]
                images.append(
                    GeneratedImage(decoded.data, decoded.mime_type, decoded.width, decoded.height, None, metadata)
                )
        if not images:
            raise malformed("stream ended without a completed image")
        return images

    def _error_for(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        code, message = _error_fields(json_body(response))
        detail = self._redact(f"HTTP {status} code={code or '-'}: {message or response.text}")
        if status == 400 and code in REFUSAL_CODES:
            return refused(detail)
        return error_for_status(status, detail, retry_after(response.headers))

    def _stream_error(self, event: dict[str, Any]) -> ProviderError:
        """An error sent inside a 200 stream: there is no status, so its code and type say what it is."""
        # Either {"error": {...}} or a flat {"type": "error", "code": ..., "message": ...}.
        error = event["error"] if isinstance(event.get("error"), dict) else event
        code, message, kind = (_text(error.get(key)) for key in ("code", "message", "type"))
        detail = self._redact(f"stream error type={kind or '-'} code={code or '-'}: {message or '-'}")
        if code in REFUSAL_CODES:
            return refused(detail)
        if code == "rate_limit_exceeded":
            return RateLimited(RATE_LIMITED_MESSAGE, detail=detail)
        if kind in ("invalid_request_error", "image_generation_user_error"):
            return error_for_status(400, detail)
        return error_for_status(500, detail)

    def _parse(self, response: httpx.Response, call: ProviderCall) -> list[GeneratedImage]:
        body = json_body(response)
        if body is None:
            raise malformed("response is not JSON")
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise malformed("response has no data list")
        metadata = {"created": body.get("created"), "model": call.model.provider_model}
        if isinstance(body.get("usage"), dict):
            # Token usage is per call, not per image: each image of the call carries the same record.
            metadata["usage"] = body["usage"]
        return [_decode(item, index, metadata) for index, item in enumerate(items)]


def _partial_images(call: ProviderCall) -> int:
    """How many partial images to ask for; 0 means don't stream.

    Only single-image calls stream: partial-image events carry no image index, so the previews of
    several images of one call would be indistinguishable. For previews with n > 1, give the model
    max_images_per_call=1 and the runner makes parallel single-image calls instead."""
    value = call.model.options.get("partial_images", 0)
    if call.n != 1 or isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, min(int(value), MAX_PARTIAL_IMAGES))


def _decode(item: object, index: int, metadata: dict[str, Any]) -> GeneratedImage:
    if not isinstance(item, dict):
        raise malformed(f"data[{index}] is not an object")
    decoded = decode_base64_image(item.get("b64_json"), f"data[{index}]")
    extra = {"revised_prompt": item["revised_prompt"]} if item.get("revised_prompt") else {}
    return GeneratedImage(
        decoded.data, decoded.mime_type, decoded.width, decoded.height, seed=None, metadata={**metadata, **extra}
    )


def _error_fields(body: object) -> tuple[str | None, str | None]:
    """The `code` and `message` of OpenAI's `{"error": {...}}` body, when it has one."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else None)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


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


def _upload(image: InputImage, index: int) -> tuple[str, bytes, str]:
    extension = image.mime_type.partition("/")[2] or "png"
    return f"input{index}.{extension}", image.data, image.mime_type
