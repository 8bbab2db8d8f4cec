"""Google's Gemini API, native: POST {base}/models/{model}:generateContent with `responseModalities`
including IMAGE and `imageConfig.aspectRatio`; the images come back as `inlineData` parts of
`candidates[].content.parts`. An input image (variation) goes in as an `inlineData` part after the
prompt. Safety blocks (`promptFeedback.blockReason`, a candidate's `finishReason` SAFETY, IMAGE_SAFETY
and the like) are the typed refusal. The key travels in the `x-goog-api-key` header, never in the URL,
so that it can't end up in an httpx error message or a proxy log."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx

from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderAuthError, ProviderBadRequest, ProviderError
from bot.core.providers.base import GeneratedImage, PreviewCallback, ProviderCall, size_for_pixels
from bot.core.providers.http import (
    AUTH_MESSAGE,
    NO_IMAGE_MESSAGE,
    DecodedImage,
    KeyedHttpProvider,
    as_list,
    as_object,
    decode_base64_image,
    error_for_status,
    json_body,
    malformed,
    refused,
    retry_after,
)

# What Gemini 2.5 Flash Image makes per ratio at the default 1K tier (Google's image-generation table).
GEMINI_SIZES = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
}
# FinishReason values that mean "blocked", from the API's enum; OTHER, IMAGE_OTHER and NO_IMAGE are not
# refusals (the model just didn't draw) and get the plain no-image answer.
REFUSAL_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
# Catalogue options this provider places itself; the rest go into generationConfig (temperature...).
OWN_OPTIONS = frozenset({"image_size", "image_only"})
MAX_TEXT_IN_DETAIL = 200


class GeminiProvider(KeyedHttpProvider):
    name = "gemini"

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        # Gemini picks the pixels from the ratio; this is what it makes, used for display.
        return GEMINI_SIZES.get(aspect_ratio) or size_for_pixels(aspect_ratio, 1024 * 1024, 16)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        # on_preview is unused: generateContent (and its stream) deliver each image whole, at the end.
        if not self.available():
            raise ProviderAuthError(AUTH_MESSAGE, detail="no Gemini API key configured")
        assert self._api_key is not None
        url = f"{self._base_url}/models/{quote(call.model.provider_model, safe='')}:generateContent"
        headers = {"x-goog-api-key": self._api_key.get_secret_value()}
        async with self._transport_errors():
            response = await self._client().post(url, json=self._body(call), headers=headers)
        if response.status_code != 200:
            raise self._error_for(response)
        return self._parse(response, call)

    def _body(self, call: ProviderCall) -> dict[str, Any]:
        options = call.model.options
        parts: list[dict[str, Any]] = [{"text": call.prompt}]
        for image in call.input_images:
            encoded = base64.b64encode(image.data).decode()
            parts.append({"inlineData": {"mimeType": image.mime_type, "data": encoded}})
        image_config: dict[str, Any] = {"aspectRatio": call.aspect_ratio}
        if options.get("image_size"):
            image_config["imageSize"] = options["image_size"]  # "1K", "2K", "4K" on the models that take it
        config: dict[str, Any] = {
            **{key: value for key, value in options.items() if key not in OWN_OPTIONS},
            # TEXT too by default: the image models are documented with both, and some refuse IMAGE alone.
            "responseModalities": ["IMAGE"] if options.get("image_only") else ["TEXT", "IMAGE"],
            "imageConfig": image_config,
        }
        if call.n > 1:
            config["candidateCount"] = call.n
        if call.seed is not None:
            config["seed"] = call.seed
        return {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}

    def _parse(self, response: httpx.Response, call: ProviderCall) -> list[GeneratedImage]:
        body = json_body(response)
        if not isinstance(body, dict):
            raise malformed("response is not a JSON object")
        feedback = as_object(body.get("promptFeedback"))
        if feedback.get("blockReason"):
            # The prompt itself was blocked: no candidates at all.
            raise refused(self._redact(f"prompt blocked: {feedback['blockReason']}"))
        candidates = as_list(body.get("candidates"))
        images: list[DecodedImage] = []
        texts: list[str] = []
        reasons: list[str] = []
        for index, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                raise malformed(f"candidates[{index}] is not an object")
            if isinstance(candidate.get("finishReason"), str):
                reasons.append(candidate["finishReason"])
            content = as_object(candidate.get("content"))
            for number, part in enumerate(content.get("parts") or []):
                if not isinstance(part, dict) or part.get("thought"):
                    # Thinking models draw interim "thought" images; only the final ones are the answer.
                    continue
                # REST answers in camelCase; the snake_case spelling is accepted too (some proxies use it).
                inline = part.get("inlineData") or part.get("inline_data")
                if isinstance(inline, dict):
                    images.append(decode_base64_image(inline.get("data"), f"candidates[{index}].parts[{number}]"))
                elif isinstance(part.get("text"), str):
                    texts.append(part["text"])
        text = "".join(texts).strip()
        if not images:
            detail = self._redact(f"no image; finishReason={reasons or '-'} text={text[:MAX_TEXT_IN_DETAIL]!r}")
            if REFUSAL_FINISH_REASONS.intersection(reasons):
                raise refused(detail)
            # Words only, or NO_IMAGE / IMAGE_OTHER: not retried, the same prompt mostly gets the same answer.
            raise ProviderBadRequest(NO_IMAGE_MESSAGE, detail=detail)
        metadata: dict[str, Any] = {"model": body.get("modelVersion") or call.model.provider_model}
        if body.get("responseId"):
            metadata["response_id"] = body["responseId"]
        if text:
            metadata["text"] = text
        if isinstance(body.get("usageMetadata"), dict):
            metadata["usage"] = body["usageMetadata"]
        # The seed is sent only when the catalogue says the model takes one; several candidates of one
        # call would all claim it, so then it is unknown.
        seed = call.seed if call.n == 1 else None
        return [GeneratedImage(i.data, i.mime_type, i.width, i.height, seed, metadata) for i in images]

    def _error_for(self, response: httpx.Response) -> ProviderError:
        """Google's `{"error": {"code", "message", "status", "details": [...]}}`."""
        status = response.status_code
        body = json_body(response)
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            detail = self._redact(f"HTTP {status}: {response.text}")
            return error_for_status(status, detail, retry_after(response.headers))
        message = error.get("message") if isinstance(error.get("message"), str) else "-"
        state = error.get("status") if isinstance(error.get("status"), str) else "-"
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("ErrorInfo")}
        detail = self._redact(f"HTTP {status} {state}: {message} {sorted(r for r in reasons if r) or ''}")
        # A wrong key is a 400 INVALID_ARGUMENT here, not a 401: it would otherwise read as our bad request.
        if "API_KEY_INVALID" in reasons or state in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return ProviderAuthError(AUTH_MESSAGE, detail=detail)
        return error_for_status(status, detail, _retry_delay(details) or retry_after(response.headers))


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """RetryInfo's `retryDelay` ("37s", "0.5s"), which Gemini's 429 RESOURCE_EXHAUSTED carries."""
    for item in details:
        if str(item.get("@type", "")).endswith("RetryInfo"):
            delay = str(item.get("retryDelay", "")).removesuffix("s")
            try:
                return max(float(delay), 0.0)
            except ValueError:
                return None
    return None
