"""Running one generation on a provider: split n across calls in parallel, retry what is retryable
with exponential backoff (honouring Retry-After), bound the calls in flight (per provider, adaptively and
across processes: limits.py), and say what was ignored."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from bot.core.aio import all_of
from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderError, ProviderUnavailable, RateLimited
from bot.core.metrics import PROVIDER_ERRORS, PROVIDER_LATENCY
from bot.core.providers.base import GeneratedImage, ImageProvider, InputImage, PreviewCallback, ProviderCall
from bot.core.providers.limits import ProviderLimits

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4
    base_delay: float = 0.5
    timeout: float = 180.0


@dataclass(frozen=True)
class ImageOutcome:
    """One requested image: made, or the error that stopped it."""

    index: int
    image: GeneratedImage | None
    error: ProviderError | None


@dataclass(frozen=True)
class GenerationSpec:
    prompt: str
    negative_prompt: str | None
    count: int
    aspect_ratio: str
    seed: int
    input_images: tuple[InputImage, ...]
    safety_identifier: str


def warnings_for(model: ModelSpec, *, seed_given: bool, negative: bool, variation: bool) -> list[str]:
    """What the user asked for that this model will not honour, in words they can read."""
    warnings = []
    if seed_given and not model.supports_seed:
        warnings.append(f"The seed is ignored by {model.name}.")
    if negative and not model.supports_negative_prompt:
        warnings.append(f"The negative prompt is ignored by {model.name}.")
    if variation and not model.supports_input_image:
        warnings.append(
            f"{model.name} can't take an image as input, so this variation reuses the prompt with a new seed."
        )
    return warnings


class ProviderRunner:
    def __init__(self, max_calls_in_flight: int, policy: RetryPolicy, limits: ProviderLimits | None = None) -> None:
        self._calls = asyncio.Semaphore(max_calls_in_flight)
        # Without limits given (tests of one provider): per process only, each provider under its own limit.
        self.limits = limits or ProviderLimits(max_calls_in_flight)
        self.policy = policy

    async def run(
        self,
        provider: ImageProvider,
        model: ModelSpec,
        spec: GenerationSpec,
        on_preview: PreviewCallback | None = None,
    ) -> list[ImageOutcome]:
        width, height = provider.size_for(model, spec.aspect_ratio)
        chunks = _chunks(spec.count, model.max_images_per_call)
        calls = [
            ProviderCall(
                model=model,
                prompt=spec.prompt,
                negative_prompt=spec.negative_prompt if model.supports_negative_prompt else None,
                n=size,
                aspect_ratio=spec.aspect_ratio,
                width=width,
                height=height,
                # Seeds follow the A1111 convention: image i of a batch uses seed + i.
                seed=(spec.seed + start) % 2**32 if model.supports_seed else None,
                input_images=spec.input_images if model.supports_input_image else (),
                safety_identifier=spec.safety_identifier,
            )
            for start, size in chunks
        ]
        results = await all_of(*(self._call_with_retries(provider, c, on_preview) for c in calls))
        outcomes: list[ImageOutcome] = []
        for (start, size), result in zip(chunks, results, strict=True):
            for offset in range(size):
                index = start + offset
                if isinstance(result, ProviderError):
                    outcomes.append(ImageOutcome(index, None, result))
                elif offset < len(result):
                    outcomes.append(ImageOutcome(index, result[offset], None))
                else:
                    missing = ProviderUnavailable("The image service returned fewer images than asked for.")
                    outcomes.append(ImageOutcome(index, None, missing))
        return outcomes

    async def _call_with_retries(
        self, provider: ImageProvider, call: ProviderCall, on_preview: PreviewCallback | None
    ) -> list[GeneratedImage] | ProviderError:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                # The provider's own limit first: a call waiting for it holds none of the process's calls.
                async with self.limits.slot(provider.name, provider.concurrency_limit) as slot, self._calls:
                    started = time.monotonic()
                    try:
                        async with asyncio.timeout(self.policy.timeout):
                            images = await provider.generate(call, on_preview)
                    except ProviderError as overload:
                        if isinstance(overload, RateLimited) or overload.retry_after is not None:
                            slot.overloaded(overload.retry_after)
                        raise
                    slot.succeeded()
                PROVIDER_LATENCY.labels(provider.name, "ok").observe(time.monotonic() - started)
                return images
            except TimeoutError:
                error: ProviderError = ProviderUnavailable(
                    "The image service took too long to answer.", detail=f"timeout after {self.policy.timeout}s"
                )
            except ProviderError as caught:
                error = caught
            PROVIDER_LATENCY.labels(provider.name, "error").observe(time.monotonic() - started)
            PROVIDER_ERRORS.labels(provider.name, error.code).inc()
            if not error.retryable or attempt >= self.policy.max_retries:
                log.warning(
                    "provider %s model %s failed (%s, attempt %d): %s",
                    provider.name, call.model.provider_model, error.code, attempt + 1, error.detail or error,
                )
                return error
            delay = self._delay(attempt, error.retry_after)
            log.info("provider %s: %s, retrying in %.1fs", provider.name, error.code, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_BACKOFF_SECONDS)
        backoff = self.policy.base_delay * 2.0**attempt
        return min(backoff * (0.5 + random.random() / 2), MAX_BACKOFF_SECONDS)


def _chunks(count: int, per_call: int) -> list[tuple[int, int]]:
    return [(start, min(per_call, count - start)) for start in range(0, count, per_call)]
