"""OpenAI Images partial-image streaming (`stream` + `partial_images`) against the fake on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from bot.core.catalogue import ModelSpec
from bot.core.errors import ContentRefused, ProviderUnavailable
from bot.core.providers.base import InputImage
from bot.core.providers.openai_images import OpenAIImagesProvider
from bot.core.providers.runner import ProviderRunner
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server, png_bytes, stream_event, streamed
from tests.plugins.providers import POLICY, SAFETY_ID, Previews, spec

API_KEY = "sk-test-stream-0123456789"
MODEL = ModelSpec(
    name="gpt-image-2",
    provider="openai",
    provider_model="gpt-image-2",
    max_images_per_call=1,
    supports_input_image=True,
    options={"quality": "low", "partial_images": 2},
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_openai_server(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI, http: httpx.AsyncClient) -> AsyncIterator[OpenAIImagesProvider]:
    provider = OpenAIImagesProvider(SecretStr(API_KEY), fake.base_url, http=http)
    yield provider
    await provider.aclose()


async def test_streams_partial_images_as_previews(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    previews = Previews()

    outcomes = await runner.run(provider, MODEL, spec(), previews)

    [request] = fake.requests
    assert request.path == "/v1/images/generations"
    assert request.json is not None
    assert request.json["stream"] is True
    assert request.json["partial_images"] == 2
    assert request.json["n"] == 1 and request.json["model"] == "gpt-image-2"
    assert request.json["safety_identifier"] == SAFETY_ID
    # One preview per partial image, in order, as PNGs.
    assert [mime for _, mime in previews.received] == ["image/png", "image/png"]
    assert previews.colours() == [(60, 0, 0), (120, 0, 0)]
    [outcome] = outcomes
    assert outcome.image is not None
    assert (outcome.image.width, outcome.image.height) == (1024, 1024)
    assert outcome.image.metadata["usage"]["total_tokens"] == 284


async def test_without_a_preview_callback_it_does_not_stream(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    outcomes = await runner.run(provider, MODEL, spec())

    [request] = fake.requests
    assert request.json is not None
    assert "stream" not in request.json and "partial_images" not in request.json
    assert outcomes[0].image is not None


async def test_several_images_per_call_do_not_stream(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    four_per_call = MODEL.model_copy(update={"max_images_per_call": 4})
    previews = Previews()

    outcomes = await runner.run(provider, four_per_call, spec(count=3), previews)

    [request] = fake.requests
    assert request.json is not None and request.json["n"] == 3 and "stream" not in request.json
    assert previews.received == []
    assert all(o.image is not None for o in outcomes)


async def test_parallel_single_image_calls_each_stream(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    previews = Previews()

    outcomes = await runner.run(provider, MODEL, spec(count=2), previews)

    assert len(fake.requests) == 2
    assert len(previews.received) == 4
    assert [o.index for o in outcomes] == [0, 1] and all(o.image is not None for o in outcomes)


async def test_variation_streams_image_edit_events(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    source = png_bytes(16, 16, color=(9, 9, 9))
    previews = Previews()

    outcomes = await runner.run(provider, MODEL, spec(input_image=InputImage(source, "image/png")), previews)

    [request] = fake.requests
    assert request.path == "/v1/images/edits"
    assert request.fields["stream"] == "true" and request.fields["partial_images"] == "2"
    assert request.files["image[]"][0].data == source
    assert len(previews.received) == 2
    assert outcomes[0].image is not None


async def test_a_repeated_partial_image_is_previewed_once(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    partial = stream_event("image_generation.partial_image", partial_image_index=0)
    fake.queue(streamed(partial, partial, stream_event("image_generation.completed", usage={})))
    previews = Previews()

    outcomes = await runner.run(provider, MODEL, spec(), previews)

    assert len(previews.received) == 1
    assert outcomes[0].image is not None


async def test_a_refusal_inside_the_stream_is_content_refused(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    error = {
        "type": "error",
        "error": {
            "type": "image_generation_user_error",
            "code": "moderation_blocked",
            "message": "Your request was rejected by the safety system.",
            "param": None,
        },
    }
    fake.queue(streamed(stream_event("image_generation.partial_image", partial_image_index=0), error))

    [outcome] = await runner.run(provider, MODEL, spec(), Previews())

    assert isinstance(outcome.error, ContentRefused)
    assert "moderation_blocked" in outcome.error.detail
    assert len(fake.requests) == 1  # not retried


async def test_a_stream_that_ends_without_an_image_is_retried(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(streamed(stream_event("image_generation.partial_image", partial_image_index=0)))

    [outcome] = await runner.run(provider, MODEL, spec(), Previews())

    assert outcome.image is not None
    assert len(fake.requests) == 2


async def test_a_failing_preview_callback_does_not_fail_the_image(
    provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    async def broken(data: bytes, mime_type: str) -> None:
        raise RuntimeError("adapter bug")

    [outcome] = await runner.run(provider, MODEL, spec(), broken)

    assert outcome.image is not None and outcome.error is None


async def test_stream_exhausting_retries_is_unavailable(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(*(streamed() for _ in range(POLICY.max_retries + 1)))

    [outcome] = await runner.run(provider, MODEL, spec(), Previews())

    assert isinstance(outcome.error, ProviderUnavailable)
    assert outcome.error.detail == "malformed response: stream ended without a completed image"


async def test_a_broken_partial_image_is_skipped_not_fatal(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    broken = stream_event("image_generation.partial_image", partial_image_index=0, b64_json="%%%not base64")
    fake.queue(streamed(broken, stream_event("image_generation.completed", usage={})))
    previews = Previews()

    [outcome] = await runner.run(provider, MODEL, spec(), previews)

    assert previews.received == []
    assert outcome.image is not None and len(fake.requests) == 1
