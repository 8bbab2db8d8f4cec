"""A stand-in provider for the benchmark: configurable latency, real encoded 1024×1024 PNG images."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field

from PIL import Image

from bot.core.catalogue import ModelSpec
from bot.core.providers.base import GeneratedImage, ImageProvider, PreviewCallback, ProviderCall

BENCH_MODEL = ModelSpec(
    name="standin", provider="standin", provider_model="standin-1", cost=1, max_images_per_call=4,
    supports_seed=True,
)


def encoded_png(size: int = 1024) -> bytes:
    """A real PNG with texture (so it compresses like a picture, not like a flat colour)."""
    image = Image.radial_gradient("L").resize((size, size)).convert("RGB")
    noise = Image.effect_noise((size, size), 40).convert("RGB")
    out = io.BytesIO()
    Image.blend(image, noise, 0.3).save(out, format="PNG")
    return out.getvalue()


@dataclass
class StandInProvider(ImageProvider):
    latency: float = 0.0
    name: str = "standin"
    image: bytes = field(default_factory=encoded_png)
    calls: int = 0
    # Seconds spent inside provider calls, per call: subtracted from end-to-end times.
    call_seconds: list[float] = field(default_factory=list)

    def available(self) -> bool:
        return True

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        return 1024, 1024

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        started = time.perf_counter()
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        images = [GeneratedImage(self.image, "image/png", 1024, 1024, (call.seed or 0) + i) for i in range(call.n)]
        self.call_seconds.append(time.perf_counter() - started)
        return images
