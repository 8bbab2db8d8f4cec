"""An AI gateway's OpenAI-compatible chat completions with image output (OpenRouter, Vercel AI Gateway
and others serving e.g. Gemini 2.5 Flash Image): POST {base}/chat/completions with `modalities`.

The assistant message carries `content` (text, kept as metadata) and `images: [{type: "image_url",
image_url: {url: "data:image/png;base64,..."}}]`; streamed, the images arrive whole in `delta.images`. An
input image (variation) goes in as an `image_url` content part. The aspect ratio is sent as
`image_config.aspect_ratio`, the way OpenRouter documents it for Gemini image models."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderAuthError, ProviderBadRequest, ProviderError
from bot.core.providers.base import GeneratedImage, PreviewCallback, ProviderCall, size_for_pixels
from bot.core.providers.gemini import GEMINI_SIZES, REFUSAL_FINISH_REASONS
from bot.core.providers.http import (
    AUTH_MESSAGE,
    NO_IMAGE_MESSAGE,
    DecodedImage,
    KeyedHttpProvider,
    as_object,
    data_url,
    decode_data_url,
    error_for_status,
    json_body,
    malformed,
    refused,
    retry_after,
    server_sent_events,
)
from bot.core.providers.openai_images import REFUSAL_CODES

BILLING_MESSAGE = "The image service account is out of credit. The operator has been told."
# Gateways serve Gemini's image models (GEMINI_SIZES, and its refusals passed along as
# `native_finish_reason`) and OpenAI's, whose refusal codes they pass through (REFUSAL_CODES).
# Catalogue options this provider consumes itself; the rest go into the request body as they are.
OWN_OPTIONS = frozenset({"image_size", "image_only"})
MAX_TEXT_IN_DETAIL = 200


@dataclass
class _Reply:
    """What one chat completion (whole or streamed) said, gathered across its choices."""

    images: list[DecodedImage] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    finish_reasons: set[str] = field(default_factory=set)
    model: str | None = None
    id: str | None = None
    usage: dict[str, Any] | None = None

    def add_meta(self, body: dict[str, Any]) -> None:
        self.model = _text(body.get("model")) or self.model
        self.id = _text(body.get("id")) or self.id
        if isinstance(body.get("usage"), dict):
            self.usage = body["usage"]

    def add_finish(self, choice: dict[str, Any]) -> None:
        for key in ("finish_reason", "native_finish_reason"):
            reason = _text(choice.get(key))
            if reason:
                self.finish_reasons.add(reason.upper())


class GatewayProvider(KeyedHttpProvider):
    name = "gateway"

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        # The gateway picks the pixels; this is what Gemini makes for the ratio, used for display.
        return GEMINI_SIZES.get(aspect_ratio) or size_for_pixels(aspect_ratio, 1024 * 1024, 16)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        if not self.available():
            raise ProviderAuthError(AUTH_MESSAGE, detail="no gateway API key configured")
        # Streamed whenever someone is watching, so that a long generation keeps the connection busy
        # (gateways send keep-alive comments meanwhile). No previews though: each streamed image arrives
        # whole and is itself a final image, so a preview of it would only upload the same picture twice.
        stream = on_preview is not None
        request = self._client().build_request(
            "POST", f"{self._base_url}/chat/completions", json=self._body(call, stream), headers=self._headers()
        )
        async with self._transport_errors():
            response = await self._client().send(request, stream=stream)
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise self._error_for(response)
                if stream:
                    reply = await self._read_stream(response)
                else:
                    reply = self._read_body(response)
            finally:
                await response.aclose()
        return self._images(reply, call)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"} if self._api_key else {}

    def _body(self, call: ProviderCall, stream: bool) -> dict[str, Any]:
        options = call.model.options
        content: str | list[dict[str, Any]] = call.prompt
        if call.input_images:
            content = [{"type": "text", "text": call.prompt}] + [
                {"type": "image_url", "image_url": {"url": data_url(image.data, image.mime_type)}}
                for image in call.input_images
            ]
        # Catalogue options go first so that they can never override the core fields.
        body: dict[str, Any] = {
            **{key: value for key, value in options.items() if key not in OWN_OPTIONS},
            "model": call.model.provider_model,
            "messages": [{"role": "user", "content": content}],
            # Image-only models (FLUX and the like) are refused a text modality by OpenRouter.
            "modalities": ["image"] if options.get("image_only") else ["image", "text"],
            # The chat-completions field for a stable per-end-user id, used by gateways against abuse.
            "user": call.safety_identifier,
        }
        image_config: dict[str, Any] = {}
        # 1:1 is every model's default: leaving image_config out then keeps the request routable to
        # upstreams that don't take it (OpenRouter answers 404 rather than ignore it).
        if call.aspect_ratio != "1:1":
            image_config["aspect_ratio"] = call.aspect_ratio
        if options.get("image_size"):
            image_config["image_size"] = options["image_size"]
        if image_config:
            body["image_config"] = image_config
        if call.n > 1:
            body["n"] = call.n
        if call.seed is not None:
            body["seed"] = call.seed
        if stream:
            body["stream"] = True
        return body

    def _read_body(self, response: httpx.Response) -> _Reply:
        body = json_body(response)
        if not isinstance(body, dict):
            raise malformed("response is not a JSON object")
        if isinstance(body.get("error"), dict):
            # OpenRouter reports failures that happen after the model started inside a 200.
            raise self._body_error(body["error"], default_status=502)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise malformed("response has no choices")
        reply = _Reply()
        reply.add_meta(body)
        for index, choice in enumerate(choices):
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise malformed(f"choices[{index}] has no message")
            reply.add_finish(choice)
            if isinstance(message.get("content"), str) and message["content"]:
                reply.text.append(message["content"])
            reply.images.extend(_decode_images(message.get("images"), f"choices[{index}].message.images"))
        return reply

    async def _read_stream(self, response: httpx.Response) -> _Reply:
        reply = _Reply()
        async for sse in server_sent_events(response):
            if sse.data.strip() == "[DONE]":
                break
            try:
                chunk = json.loads(sse.data)
            except ValueError:
                raise malformed("stream chunk is not JSON") from None
            if not isinstance(chunk, dict):
                raise malformed("stream chunk is not an object")
            if isinstance(chunk.get("error"), dict):
                raise self._body_error(chunk["error"], default_status=502)
            reply.add_meta(chunk)
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                reply.add_finish(choice)
                delta = as_object(choice.get("delta"))
                if isinstance(delta.get("content"), str) and delta["content"]:
                    reply.text.append(delta["content"])
                reply.images.extend(_decode_images(delta.get("images"), "delta.images"))
        return reply

    def _images(self, reply: _Reply, call: ProviderCall) -> list[GeneratedImage]:
        text = "".join(reply.text).strip()
        if not reply.images:
            detail = self._redact(
                f"no image; finish={sorted(reply.finish_reasons) or '-'} text={text[:MAX_TEXT_IN_DETAIL]!r}"
            )
            if reply.finish_reasons & (REFUSAL_FINISH_REASONS | {"CONTENT_FILTER"}):
                raise refused(detail)
            # The model answered in words only. Not retried: the same prompt mostly gets the same answer.
            raise ProviderBadRequest(NO_IMAGE_MESSAGE, detail=detail)
        metadata: dict[str, Any] = {"model": reply.model or call.model.provider_model}
        if reply.id:
            metadata["id"] = reply.id
        if text:
            metadata["text"] = text
        if reply.usage:
            # Usage is per call, not per image: each image of the call carries the same record.
            metadata["usage"] = reply.usage
        # A seed is only sent when the catalogue says the model takes one; with several images in one
        # call they would all claim the same seed, so then it is unknown.
        seed = call.seed if call.n == 1 else None
        return [
            GeneratedImage(image.data, image.mime_type, image.width, image.height, seed=seed, metadata=metadata)
            for image in reply.images
        ]

    def _error_for(self, response: httpx.Response) -> ProviderError:
        body = json_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            detail = self._redact(f"HTTP {response.status_code}: {response.text}")
            return error_for_status(response.status_code, detail, retry_after(response.headers))
        return self._body_error(error, response.status_code, retry_after(response.headers))

    def _body_error(
        self, error: dict[str, Any], status: int | None = None, wait: float | None = None, default_status: int = 500
    ) -> ProviderError:
        """OpenRouter's `{"error": {"code", "message", "metadata"}}` (the code is the HTTP status) or
        OpenAI's `{"error": {"type", "code", "message"}}`, from a response or inside a stream."""
        code = error.get("code")
        if status is None:
            status = code if isinstance(code, int) and 400 <= code < 600 else default_status
        message = _text(error.get("message")) or "-"
        metadata = as_object(error.get("metadata"))
        # Only these metadata fields: `raw` may hold the upstream's whole answer.
        extra = {key: metadata[key] for key in ("reasons", "provider_name", "model_slug") if key in metadata}
        detail = self._redact(f"HTTP {status} code={code if code is not None else '-'}: {message} {extra or ''}")
        # OpenRouter's moderation answers 403 with the reasons it flagged; other 403s are about the key.
        if (status == 403 and ("reasons" in metadata or "flagged_input" in metadata)) or code in REFUSAL_CODES:
            return refused(detail)
        if status == 402:
            return ProviderAuthError(BILLING_MESSAGE, detail=detail)
        return error_for_status(status, detail, wait)


def _decode_images(items: object, where: str) -> list[DecodedImage]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise malformed(f"{where} is not a list")
    decoded = []
    for index, item in enumerate(items):
        image_url = item.get("image_url") if isinstance(item, dict) else None
        url = image_url.get("url") if isinstance(image_url, dict) else None
        decoded.append(decode_data_url(url, f"{where}[{index}]"))
    return decoded


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
