"""What the provider tests share: one HTTP client per module, a fast retry policy, the runner, the
request they send and a recorder for live previews."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from bot.core.providers.base import InputImage
from bot.core.providers.http import DEFAULT_TIMEOUT
from bot.core.providers.runner import GenerationSpec, ProviderRunner, RetryPolicy

POLICY = RetryPolicy(max_retries=2, base_delay=0.01, timeout=5.0)
PROMPT = "a lighthouse at dusk, oil painting"
SAFETY_ID = "user-hash-abc123"


class Previews:
    """An on_preview callback that keeps what it was given."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []

    async def __call__(self, data: bytes, mime_type: str) -> None:
        self.received.append((data, mime_type))

    def colours(self) -> list[tuple[int, ...]]:
        return [Image.open(io.BytesIO(data)).getpixel((0, 0)) for data, _ in self.received]


def spec(
    count: int = 1,
    aspect_ratio: str = "1:1",
    input_image: InputImage | None = None,
    negative: str | None = None,
    input_images: tuple[InputImage, ...] = (),
) -> GenerationSpec:
    return GenerationSpec(
        prompt=PROMPT,
        negative_prompt=negative,
        count=count,
        aspect_ratio=aspect_ratio,
        seed=1234,
        input_images=(input_image,) if input_image else input_images,
        safety_identifier=SAFETY_ID,
    )


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # One client for the module: building one (its TLS context) costs ~70 ms, more than most tests.
    async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT) as client:
        yield client


@pytest.fixture
def runner() -> ProviderRunner:
    return ProviderRunner(max_calls_in_flight=8, policy=POLICY)
