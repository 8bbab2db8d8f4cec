"""The provider interface, modelled on the AI SDK's generateImage: one call makes up to
`max_images_per_call` images; the runner (runner.py) splits, retries and collects warnings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.core.catalogue import ModelSpec

PreviewCallback = Callable[[bytes, str], Awaitable[None]]


@dataclass(frozen=True)
class InputImage:
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class ProviderCall:
    """One call to a provider: `n` images of one prompt."""

    model: ModelSpec
    prompt: str
    negative_prompt: str | None
    n: int
    aspect_ratio: str
    width: int
    height: int
    seed: int | None
    input_images: tuple[InputImage, ...]  # what to start from (an edit, a variation): empty for none
    safety_identifier: str  # a hash of the user, never the raw id


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime_type: str
    width: int
    height: int
    # The seed that made this image: as the service reports it, or as sent to a model that honours seeds;
    # None when no seed steered it. It becomes the image record's seed, the one users are shown.
    seed: int | None
    metadata: dict[str, Any] = field(default_factory=dict)


class ImageProvider(ABC):
    """A service that makes images. Implementations map their errors to core.errors.ProviderError types."""

    name: str
    # Calls in flight this provider accepts (None: no limit of its own). Waiting for a slot does not count
    # against a call's timeout.
    concurrency_limit: int | None = None

    @abstractmethod
    def available(self) -> bool:
        """False when its credentials are missing: its models are then hidden."""

    @abstractmethod
    def size_for(self, model: ModelSpec, aspect_ratio: str) -> tuple[int, int]:
        """Width and height this model accepts for the ratio."""

    @abstractmethod
    async def generate(self, call: ProviderCall, on_preview: PreviewCallback | None) -> list[GeneratedImage]:
        """Make `call.n` images (fewer only if the provider returned fewer)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections."""


def ratio_parts(aspect_ratio: str) -> tuple[int, int]:
    width, _, height = aspect_ratio.partition(":")
    return int(width), int(height)


def size_for_pixels(aspect_ratio: str, pixels: int, multiple: int) -> tuple[int, int]:
    """The size of the given ratio closest to `pixels` in area, both sides multiples of `multiple`."""
    rw, rh = ratio_parts(aspect_ratio)
    unit = (pixels / (rw * rh)) ** 0.5
    width = max(multiple, round(rw * unit / multiple) * multiple)
    height = max(multiple, round(rh * unit / multiple) * multiple)
    return width, height
