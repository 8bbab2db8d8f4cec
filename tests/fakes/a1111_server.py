"""A fake AUTOMATIC1111 web UI API on 127.0.0.1: /sdapi/v1/txt2img and /img2img answering
`{"images": [base64 PNG...], "parameters": {...}, "info": "<JSON string with all_seeds...>"}`,
/sdapi/v1/progress with `current_image` while a job runs, /sdapi/v1/interrupt, optional HTTP Basic
auth (--api-auth), and the web UI's error bodies. Like the real server, it notes how many jobs ran
at once, so that a test can see the provider's concurrency limit hold."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import BasicAuth, web
from PIL import Image, PngImagePlugin

from tests.fakes.http_server import FakeServer, Scripted, respond, serve

RANDOM_SEED = 3_141_592_653  # what the server "rolls" for seed -1, so a test can see it read back
RANDOM_SUBSEED = 2_718_281_828


@functools.cache
def png_with_parameters(width: int, height: int, parameters: str, color: tuple[int, int, int]) -> bytes:
    """A PNG carrying A1111's infotext in its `parameters` text chunk, as the web UI returns them."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def infotext(prompt: str, negative: str, seed: int, width: int, height: int) -> str:
    return (
        f"{prompt}\nNegative prompt: {negative}\n"
        f"Steps: 30, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: {width}x{height}, Model: sd_xl_base_1.0"
    )


def out_of_memory() -> Scripted:
    body = {
        "error": "OutOfMemoryError",
        "detail": "",
        "body": "",
        "errors": "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 8.00 GiB",
    }
    return Scripted(status=500, body=body)


def server_error() -> Scripted:
    body = {
        "error": "RuntimeError",
        "detail": "",
        "body": "",
        "errors": "Expected all tensors to be on the same device",
    }
    return Scripted(status=500, body=body)


def validation_error() -> Scripted:
    body = {"detail": [{"loc": ["body", "width"], "msg": "value is not a valid integer", "type": "type_error.integer"}]}
    return Scripted(status=422, body=body)


def proxy_rate_limited(retry_after: str = "0") -> Scripted:
    """A reverse proxy in front of the web UI (the usual way to expose one) limiting requests."""
    return Scripted(
        status=429,
        body=b"<html><body><h1>429 Too Many Requests</h1></body></html>",
        headers={"Retry-After": retry_after},
        content_type="text/html",
    )


def slow(delay: float) -> Scripted:
    return Scripted(delay=delay)


class FakeA1111(FakeServer):
    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.credentials = credentials
        self.jobs_running = 0
        self.max_jobs_running = 0
        self.interrupts = 0
        # Live previews handed out by /progress while a job runs, one per poll; the last one repeats.
        self.preview_frames: list[bytes] = []
        self._poll = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/sdapi/v1/txt2img", self._generate)
        app.router.add_post("/sdapi/v1/img2img", self._generate)
        app.router.add_get("/sdapi/v1/progress", self._progress)
        app.router.add_post("/sdapi/v1/interrupt", self._interrupt)

    def generation_requests(self) -> list[Any]:
        return [r for r in self.requests if r.path.endswith(("/txt2img", "/img2img"))]

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.credentials is None:
            return None
        try:
            given = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            given = None
        if given is not None and (given.login, given.password) == self.credentials:
            return None
        headers = {"WWW-Authenticate": "Basic"}
        return respond(Scripted(status=401, headers=headers), {"detail": "Incorrect username or password"})

    async def _generate(self, request: web.Request) -> web.Response:
        async with self.tracking():
            recorded = await self.record(request)
            if (denied := self._unauthorized(request)) is not None:
                return denied
            scripted = self.next_script()
            self.jobs_running += 1
            self.max_jobs_running = max(self.max_jobs_running, self.jobs_running)
            self._poll = 0
            try:
                if scripted.delay:
                    await asyncio.sleep(scripted.delay)
            finally:
                self.jobs_running -= 1
            return respond(scripted, scripted.body if scripted.body is not None else self._success(recorded.json))

    async def _progress(self, request: web.Request) -> web.Response:
        await self.record(request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        current = None
        if self.jobs_running and self.preview_frames and request.query.get("skip_current_image") == "false":
            current = base64.b64encode(self.preview_frames[min(self._poll, len(self.preview_frames) - 1)]).decode()
            self._poll += 1
        state = {
            "skipped": False,
            "interrupted": False,
            "job": "scripts_txt2img" if self.jobs_running else "",
            "job_count": self.jobs_running,
            "job_no": 0,
            "sampling_step": 10,
            "sampling_steps": 30,
        }
        body = {
            "progress": 0.3 if self.jobs_running else 0.0,
            "eta_relative": 2.0 if self.jobs_running else 0.0,
            "state": state,
            "current_image": current,
            "textinfo": None,
        }
        return respond(Scripted(), body)

    async def _interrupt(self, request: web.Request) -> web.Response:
        await self.record(request)
        self.interrupts += 1
        return respond(Scripted(), {})

    def _success(self, payload: dict[str, Any]) -> dict[str, Any]:
        width, height, batch = int(payload["width"]), int(payload["height"]), int(payload.get("batch_size", 1))
        seed = int(payload.get("seed", -1))
        seed = RANDOM_SEED if seed == -1 else seed
        subseed = int(payload.get("subseed", -1))
        subseed = RANDOM_SUBSEED if subseed == -1 else subseed
        # Like A1111: one seed per image of the batch, counting up (or the same seed, varied by subseed).
        varied = float(payload.get("subseed_strength", 0)) > 0
        seeds = [seed if varied else seed + i for i in range(batch)]
        subseeds = [subseed + i for i in range(batch)]
        prompt, negative = str(payload.get("prompt", "")), str(payload.get("negative_prompt", ""))
        texts = [infotext(prompt, negative, s, width, height) for s in seeds]
        images = [
            base64.b64encode(png_with_parameters(width, height, text, (10 * i, 100, 200))).decode()
            for i, text in enumerate(texts)
        ]
        info = {
            "prompt": prompt,
            "all_prompts": [prompt] * batch,
            "negative_prompt": negative,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": subseeds[0],
            "all_subseeds": subseeds,
            "subseed_strength": payload.get("subseed_strength", 0),
            "width": width,
            "height": height,
            "sampler_name": payload.get("sampler_name", "Euler a"),
            "cfg_scale": payload.get("cfg_scale", 7),
            "steps": payload.get("steps", 20),
            "batch_size": batch,
            "sd_model_name": "sd_xl_base_1.0",
            "denoising_strength": payload.get("denoising_strength"),
            "index_of_first_image": 0,
            "infotexts": texts,
        }
        parameters = {k: v for k, v in payload.items() if k != "init_images"}
        return {"images": images, "parameters": parameters, "info": json.dumps(info)}


@asynccontextmanager
async def fake_a1111_server(credentials: tuple[str, str] | None = None) -> AsyncIterator[FakeA1111]:
    """Serve a FakeA1111; `base_url` is the web UI's root (the API lives under /sdapi/v1)."""
    async with serve(FakeA1111(credentials)) as fake:
        yield fake

