"""The offline demo model: a deterministic picture drawn with Pillow from prompt, seed and ratio.
It is not AI; it lets the bot run end to end with no key and no network."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageFont, ImageOps

from bot.core.catalogue import ModelSpec
from bot.core.providers.base import (
    GeneratedImage,
    ImageProvider,
    InputImage,
    PreviewCallback,
    ProviderCall,
    size_for_pixels,
)

PIXELS = 768 * 768


class OfflineProvider(ImageProvider):
    name = "offline"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        self.delay_seconds = delay_seconds

    def available(self) -> bool:
        return True

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        return size_for_pixels(aspect_ratio, PIXELS, 16)

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        # Drawing and PNG encoding hold the CPU for tens of milliseconds: keep them off the event loop.
        return await asyncio.to_thread(self._draw_all, call)

    def _draw_all(self, call: ProviderCall) -> list[GeneratedImage]:
        # Without a seed from the user's model settings, roll one like A1111's -1, and report it.
        base_seed = call.seed if call.seed is not None else random.randrange(2**32)
        images = []
        for i in range(call.n):
            seed = (base_seed + i) % 2**32
            if call.input_images:
                data = draw_edit(call.prompt, seed, call.width, call.height, call.input_images)
            else:
                data = draw(call.prompt, call.negative_prompt, seed, call.width, call.height)
            images.append(GeneratedImage(data, "image/png", call.width, call.height, seed, {"model": "offline-demo"}))
        return images


def draw(prompt: str, negative: str | None, seed: int, width: int, height: int) -> bytes:
    digest = hashlib.sha256(f"{prompt}\x00{negative or ''}\x00{seed}".encode()).digest()
    rng = random.Random(digest)
    top = _colour(rng)
    bottom = _colour(rng)
    image = Image.linear_gradient("L").resize((width, height))
    canvas = Image.composite(Image.new("RGB", (width, height), bottom), Image.new("RGB", (width, height), top), image)
    pen = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(rng.randint(6, 14)):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randint(min(width, height) // 20, min(width, height) // 4)
        fill = (*_colour(rng), rng.randint(90, 200))
        if rng.random() < 0.5:
            pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            pen.regular_polygon((x, y, r), rng.randint(3, 8), rotation=rng.randint(0, 359), fill=fill)
    return _labelled(canvas, prompt, seed)


def draw_edit(prompt: str, seed: int, width: int, height: int, sources: tuple[InputImage, ...]) -> bytes:
    """An edit (or a variation, a remix): the pictures given, side by side, each cropped to fill its share
    of the requested ratio, with the prompt in a band. Nothing random, so tests can see the input."""
    canvas = Image.new("RGB", (width, height))
    share = width // len(sources)
    for index, source in enumerate(sources):
        left = index * share
        right = width if index == len(sources) - 1 else left + share
        with Image.open(io.BytesIO(source.data)) as picture:
            canvas.paste(ImageOps.fit(picture.convert("RGB"), (right - left, height)), (left, 0))
    return _labelled(canvas, prompt, seed)


def _labelled(canvas: Image.Image, prompt: str, seed: int) -> bytes:
    width, height = canvas.size
    pen = ImageDraw.Draw(canvas, "RGBA")
    font = ImageFont.load_default(size=max(14, height // 28))
    caption = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    pen.rectangle((0, height - height // 9, width, height), fill=(0, 0, 0, 140))
    pen.text((width // 40, height - height // 11), caption, font=font, fill=(255, 255, 255, 255))
    pen.text((width // 40, height // 60), f"offline demo · seed {seed}", font=font, fill=(255, 255, 255, 220))
    out = io.BytesIO()
    canvas.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)
