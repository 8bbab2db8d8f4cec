"""A self-hosted AUTOMATIC1111-compatible web UI API (also Forge and SD.Next), started with --api:
POST /sdapi/v1/txt2img, or /sdapi/v1/img2img for variations.

Such a server renders one job at a time behind a lock, so this provider holds at most
`max_concurrency` requests in flight itself: extra calls wait here rather than pile up there. While a
request runs, GET /sdapi/v1/progress is polled for `current_image` (the live preview the web UI shows,
when the server has live previews enabled); each new picture becomes one preview. The seed of every
image is read back from the response's `info.all_seeds`, so a random seed (-1) is still recorded."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr

from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderBadRequest, ProviderError
from bot.core.providers.base import (
    GeneratedImage,
    InputImage,
    PreviewCallback,
    ProviderCall,
    size_for_pixels,
)
from bot.core.providers.http import (
    BAD_REQUEST_MESSAGE,
    HttpProvider,
    decode_base64_image,
    error_for_status,
    json_body,
    malformed,
    retry_after,
    send_preview,
)

log = logging.getLogger(__name__)

OOM_MESSAGE = "The image server ran out of GPU memory. Try fewer images at once."
# SDXL-class checkpoints are trained around 1024x1024; set `base_size: 512` for SD 1.5 models.
DEFAULT_BASE_SIZE = 1024
SIZE_MULTIPLE = 8  # the latent space is 1/8 of the image: sides must be multiples of 8
DEFAULT_SUBSEED_STRENGTH = 0.3
# provider_model values meaning "use whatever checkpoint is loaded", so no reload is forced.
LOADED_CHECKPOINT = frozenset({"", "default"})
# Catalogue options this provider consumes itself; the rest (steps, cfg_scale, sampler_name...) are
# passed into the payload as they are.
OWN_OPTIONS = frozenset({"base_size", "variation", "subseed_strength"})
PROGRESS_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
INTERRUPT_TIMEOUT = 2.0
INFOTEXT_SEED = re.compile(r"\bSeed: (\d+)")
# httpx's own pool sizes, kept as the floor.
DEFAULT_POOL = 100
DEFAULT_KEEPALIVE = 20


class Automatic1111Provider(HttpProvider):
    name = "automatic1111"

    def __init__(
        self,
        base_url: str | None,
        username: str | None = None,
        password: SecretStr | None = None,
        max_concurrency: int = 1,
        denoising_strength: float = 0.55,
        http: httpx.AsyncClient | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        # Each request in flight may have a progress poll beside it: room for both, beyond httpx's default
        # pool of 100 when a farm behind one URL takes more at once.
        limits = httpx.Limits(
            max_connections=max(DEFAULT_POOL, 2 * max_concurrency + 2),
            max_keepalive_connections=max(DEFAULT_KEEPALIVE, 2 * max_concurrency),
        )
        super().__init__(base_url or "", http, limits)
        # No username: requests go without auth (the client has none of its own).
        self._auth = (
            httpx.BasicAuth(username, password.get_secret_value() if password else "")
            if username else httpx.USE_CLIENT_DEFAULT
        )
        self._password = password
        # The runner holds calls beyond this outside their timeout: one web UI runs one job at a time, a
        # farm behind one URL as many as it has GPUs.
        self.concurrency_limit = max_concurrency
        self._denoising_strength = denoising_strength
        self._progress_interval = progress_interval

    def available(self) -> bool:
        return bool(self._base_url)

    def _secrets(self) -> Iterable[str]:
        return (self._password.get_secret_value(),) if self._password else ()

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        base = model.options.get("base_size", DEFAULT_BASE_SIZE)
        base = int(base) if isinstance(base, int | float) and not isinstance(base, bool) else DEFAULT_BASE_SIZE
        return size_for_pixels(aspect_ratio, base * base, SIZE_MULTIPLE)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        if not self.available():
            raise ProviderBadRequest(BAD_REQUEST_MESSAGE, detail="no A1111_BASE_URL configured")
        endpoint, payload = self._payload(call)
        async with self._transport_errors():
            response = await self._run(endpoint, payload, on_preview)
        if response.status_code != 200:
            raise self._error_for(response)
        return self._parse(response, call, payload)

    def _payload(self, call: ProviderCall) -> tuple[str, dict[str, Any]]:
        options = call.model.options
        payload: dict[str, Any] = {
            **{key: value for key, value in options.items() if key not in OWN_OPTIONS},
            "prompt": call.prompt,
            "negative_prompt": call.negative_prompt or "",
            "seed": call.seed if call.seed is not None else -1,
            "batch_size": call.n,
            "n_iter": 1,
            "width": call.width,
            "height": call.height,
            "send_images": True,
            "save_images": False,
        }
        if call.model.provider_model not in LOADED_CHECKPOINT:
            # Keep the checkpoint loaded afterwards: restoring would reload weights on every request.
            payload["override_settings"] = {"sd_model_checkpoint": call.model.provider_model}
            payload["override_settings_restore_afterwards"] = False
        if not call.input_images:
            return "txt2img", payload
        parent_seed = _infotext_seed(call.input_images[0]) if options.get("variation") == "subseed" else None
        if parent_seed is not None:
            # The parent's own noise, nudged by a second seed: a close sibling of the parent image.
            strength = options.get("subseed_strength", DEFAULT_SUBSEED_STRENGTH)
            payload.update(seed=parent_seed, subseed=payload["seed"], subseed_strength=strength)
            return "txt2img", payload
        payload["init_images"] = [base64.b64encode(image.data).decode() for image in call.input_images]
        payload["denoising_strength"] = options.get("denoising_strength", self._denoising_strength)
        return "img2img", payload

    async def _run(self, endpoint: str, payload: dict[str, Any], on_preview: PreviewCallback | None) -> httpx.Response:
        request = asyncio.create_task(
            self._client().post(f"{self._base_url}/sdapi/v1/{endpoint}", json=payload, auth=self._auth)
        )
        try:
            if on_preview is not None:
                await self._watch_progress(request, on_preview)
            return await request
        except asyncio.CancelledError:
            # Abandoned (the runner's timeout, a shutdown): stop the server's work too, or it keeps
            # the GPU busy on an image nobody will see while the next job waits. Done before our
            # slot is released, so that it can't interrupt the next job instead.
            request.cancel()
            await self._interrupt()
            raise
        finally:
            if not request.done():
                request.cancel()
                with suppress(asyncio.CancelledError, httpx.HTTPError):
                    await request

    async def _watch_progress(self, request: asyncio.Task[httpx.Response], on_preview: PreviewCallback) -> None:
        last: str | None = None
        while True:
            done, _ = await asyncio.wait({request}, timeout=self._progress_interval)
            if done:
                return
            current = await self._current_image()
            if current is None or current == last:
                continue  # nothing new since the last poll: one preview per picture, not per poll
            last = current
            try:
                preview = decode_base64_image(current, "progress current_image")
            except ProviderError:
                continue
            await send_preview(on_preview, preview)

    async def _current_image(self) -> str | None:
        """The live preview the server holds now, or None. Progress is best effort: failures are quiet."""
        try:
            response = await self._client().get(
                f"{self._base_url}/sdapi/v1/progress",
                params={"skip_current_image": "false"},
                auth=self._auth,
                timeout=PROGRESS_TIMEOUT,
            )
        except httpx.HTTPError as error:
            log.debug("a1111 progress poll failed: %s", type(error).__name__)
            return None
        body = json_body(response) if response.status_code == 200 else None
        current = body.get("current_image") if isinstance(body, dict) else None
        return current if isinstance(current, str) and current else None

    async def _interrupt(self) -> None:
        try:
            async with asyncio.timeout(INTERRUPT_TIMEOUT):
                await self._client().post(f"{self._base_url}/sdapi/v1/interrupt", auth=self._auth)
        except (TimeoutError, httpx.HTTPError) as error:
            log.info("a1111 interrupt after an abandoned request failed: %s", type(error).__name__)

    def _parse(self, response: httpx.Response, call: ProviderCall, payload: dict[str, Any]) -> list[GeneratedImage]:
        body = json_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("images"), list):
            raise malformed("response has no images list")
        info = _info(body.get("info"))
        # With a grid returned (an "return grid" server option) the batch starts after it; extensions
        # such as ControlNet may append their own maps after the batch: keep exactly our n.
        first_index = info.get("index_of_first_image")
        first = first_index if isinstance(first_index, int) else 0
        encoded = body["images"][first : first + call.n]
        if not encoded:
            raise malformed("response has no images")
        seeds = _ints(info.get("all_seeds")) or _batch_seeds(info, payload, len(encoded))
        subseeds = _ints(info.get("all_subseeds"))
        shared: dict[str, Any] = {
            key: info[key] for key in ("sd_model_name", "sampler_name", "steps", "cfg_scale") if key in info
        }
        shared["model"] = info.get("sd_model_name") or call.model.provider_model
        if "denoising_strength" in payload and "init_images" in payload:
            shared["denoising_strength"] = payload["denoising_strength"]
        images = []
        for index, item in enumerate(encoded):
            decoded = decode_base64_image(item, f"images[{first + index}]")
            seed = seeds[index] if index < len(seeds) else None
            metadata = dict(shared)
            if "subseed_strength" in payload and index < len(subseeds):
                metadata.update(subseed=subseeds[index], subseed_strength=payload["subseed_strength"])
            images.append(
                GeneratedImage(decoded.data, decoded.mime_type, decoded.width, decoded.height, seed, metadata)
            )
        return images

    def _error_for(self, response: httpx.Response) -> ProviderError:
        """The web UI's FastAPI errors: `{"detail": ...}` (HTTPException and 422 validation) or its
        own `{"error": <exception name>, "detail", "body", "errors": <message>}` for failures."""
        status = response.status_code
        body = json_body(response)
        body = body if isinstance(body, dict) else {}
        error_name = body.get("error")
        name = error_name if isinstance(error_name, str) else ""
        message = body.get("errors") or body.get("detail") or response.text
        detail = self._redact(f"HTTP {status} {name or '-'}: {message}")
        if "OutOfMemory" in name or "out of memory" in str(message).lower():
            # The same batch would run out again: not retried; fewer images per call may fit.
            return ProviderBadRequest(OOM_MESSAGE, detail=detail)
        if status == 404:
            # A missing route (the UI started without --api) or an unknown sampler/model/script.
            return ProviderBadRequest(BAD_REQUEST_MESSAGE, detail=f"{detail} (is the web UI started with --api?)")
        return error_for_status(status, detail, retry_after(response.headers))


def _info(value: object) -> dict[str, Any]:
    """`info` is a JSON string in A1111's answer (an object in some forks)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _batch_seeds(info: dict[str, Any], payload: dict[str, Any], count: int) -> list[int]:
    """The seeds of a batch whose answer has no `all_seeds` (a fork, a proxy): from the one seed the answer
    or the request gives, counting up per image as the web UI does (a subseed batch shares its seed).
    None known (a random -1 that the answer doesn't report) means no seeds: better none than a wrong one."""
    reported = info.get("seed")
    first = reported if isinstance(reported, int) else payload["seed"]
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        return []
    step = 0 if "subseed_strength" in payload else 1
    return [first + step * index for index in range(count)]


def _ints(value: object) -> list[int]:
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def _infotext_seed(image: InputImage) -> int | None:
    """The seed A1111 wrote into the parent PNG's `parameters` text ("... Seed: 1234, ..."), if any."""
    try:
        with Image.open(io.BytesIO(image.data)) as parent:
            parameters = parent.info.get("parameters")
    except (UnidentifiedImageError, OSError):
        return None
    match = INFOTEXT_SEED.search(parameters) if isinstance(parameters, str) else None
    return int(match.group(1)) if match else None
