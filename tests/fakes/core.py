"""Stand-ins for the two ends of the core in core tests: a provider whose every call is scripted
(it really makes PNG images), and an observer that records what a front end would be told."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderError
from bot.core.events import DeliveredParts, DeliveryReceipt
from bot.core.models import Generation, ImageFile
from bot.core.providers.base import GeneratedImage, ImageProvider, PreviewCallback, ProviderCall


def png(width: int = 64, height: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def scripted_model(name: str = "scripted", cost: int = 1, per_call: int = 4, **extra: object) -> ModelSpec:
    return ModelSpec(name=name, provider="scripted", provider_model=f"{name}-v1", cost=cost,
                     max_images_per_call=per_call, supports_seed=True, supports_input_image=True, **extra)


@dataclass
class ScriptedProvider(ImageProvider):
    """Each call pops the next step: None → success, a ProviderError → raised, 'block' → waits for `release`.
    With no steps left, every call succeeds."""

    steps: list[object] = field(default_factory=list)
    calls: list[ProviderCall] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    delay: float = 0.0
    name: str = "scripted"

    def available(self) -> bool:
        return True

    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        return 64, 64

    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        self.calls.append(call)
        self.started.set()
        step = self.steps.pop(0) if self.steps else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if step == "block":
            await self.release.wait()
        elif isinstance(step, ProviderError):
            raise step
        seed = call.seed or 0
        return [GeneratedImage(png(), "image/png", 64, 64, seed + i) for i in range(call.n)]


@dataclass
class RecordingObserver:
    """Records every event; `done` holds the jobs whose final event arrived."""

    platform: str = "test"
    events: list[tuple[str, str]] = field(default_factory=list)
    done: dict[str, Generation] = field(default_factory=dict)
    images: dict[str, Sequence[ImageFile]] = field(default_factory=dict)
    fail_deliveries: int = 0

    async def on_queued(self, job: Generation, position: int) -> str | None:
        self.events.append(("queued", job.id))
        return f"msg-{job.id}"

    async def on_started(self, job: Generation) -> None:
        self.events.append(("started", job.id))

    async def on_preview(self, job: Generation, image: bytes, mime_type: str) -> None:
        self.events.append(("preview", job.id))

    async def on_completed(self, job: Generation, images: Sequence[ImageFile]) -> DeliveryReceipt | None:
        self._maybe_fail()
        self.events.append(("completed", job.id))
        self.done[job.id] = job
        self.images[job.id] = images
        return DeliveryReceipt(file_refs={i.record.id: f"file-{i.record.index}" for i in images})

    async def on_failed(self, job: Generation) -> None:
        self._maybe_fail()
        self.events.append(("failed", job.id))
        self.done[job.id] = job

    async def on_cancelled(self, job: Generation) -> None:
        self._maybe_fail()
        self.events.append(("cancelled", job.id))
        self.done[job.id] = job

    def _maybe_fail(self) -> None:
        if self.fail_deliveries > 0:
            self.fail_deliveries -= 1
            raise ConnectionError("platform down")


@dataclass
class PartsObserver(RecordingObserver):
    """Posts a result in parts, one message per image, recording each part's receipt as it is accepted
    (events.DeliversInParts). `posted` lists every part posted, in order; `fail_after_parts` parts are
    posted before the next post fails (once); each post takes `part_delay` seconds."""

    posted: list[tuple[str, str]] = field(default_factory=list)
    fail_after_parts: int | None = None
    part_delay: float = 0.0

    async def on_completed_in_parts(
        self, job: Generation, images: Sequence[ImageFile], parts: DeliveredParts
    ) -> DeliveryReceipt | None:
        for image in sorted(images, key=lambda i: i.record.index):
            part = f"image-{image.record.index}"
            if part in parts.sent:
                continue
            if self.fail_after_parts is not None and len(self.posted) >= self.fail_after_parts:
                self.fail_after_parts = None
                raise ConnectionError("platform down")
            await asyncio.sleep(self.part_delay)
            self.posted.append((job.id, part))
            await parts.record(part, f"msg-{job.id}-{part}", {image.record.id: f"file-{image.record.index}"})
        self.events.append(("completed", job.id))
        self.done[job.id] = job
        self.images[job.id] = images
        return None
