"""OpenAIImagesProvider and the ProviderRunner against a fake OpenAI Images server on 127.0.0.1."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from bot.core.catalogue import ASPECT_RATIOS, ModelSpec
from bot.core.errors import (
    ContentRefused,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from bot.core.providers.base import InputImage, ProviderCall, ratio_parts
from bot.core.providers.openai_images import OpenAIImagesProvider
from bot.core.providers.runner import ImageOutcome, ProviderRunner, RetryPolicy
from tests.fakes.openai_server import (
    FakeOpenAI,
    bad_request,
    fake_openai_server,
    malformed,
    moderation_blocked,
    png_bytes,
    rate_limited,
    server_error,
    slow,
    success,
)
from tests.plugins.providers import POLICY, spec

API_KEY = "sk-test-0123456789abcdefSECRET"
MODEL = ModelSpec(
    name="gpt-image-2",
    provider="openai",
    provider_model="gpt-image-2",
    max_images_per_call=4,
    supports_input_image=True,
    options={"quality": "low", "output_format": "png"},
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_openai_server(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIImagesProvider]:
    provider = OpenAIImagesProvider(SecretStr(API_KEY), fake.base_url)
    yield provider
    await provider.aclose()


def call(model: ModelSpec = MODEL, n: int = 1) -> ProviderCall:
    return ProviderCall(
        model=model,
        prompt="a lighthouse at dusk, oil painting",
        negative_prompt=None,
        n=n,
        aspect_ratio="1:1",
        width=1024,
        height=1024,
        seed=None,
        input_images=(),
        safety_identifier="user-hash-abc123",
    )


def only_error(outcomes: list[ImageOutcome]) -> ProviderError:
    assert len(outcomes) == 1
    assert outcomes[0].image is None
    assert outcomes[0].error is not None
    return outcomes[0].error


def assert_no_key(error: ProviderError, key: str = API_KEY) -> None:
    for text in (str(error), repr(error), error.user_message, error.detail):
        assert key not in text


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_success_sends_the_openai_wire_format(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    outcomes = await runner.run(provider, MODEL, spec(count=2))

    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.path == "/v1/images/generations"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse at dusk, oil painting",
        "n": 2,
        "size": "1024x1024",
        "safety_identifier": "user-hash-abc123",
        "quality": "low",
        "output_format": "png",
    }
    assert [o.index for o in outcomes] == [0, 1]
    for outcome in outcomes:
        assert outcome.error is None and outcome.image is not None
        image = outcome.image
        assert (image.mime_type, image.width, image.height, image.seed) == ("image/png", 1024, 1024, None)
        assert image.metadata["model"] == "gpt-image-2"
        with Image.open(io.BytesIO(image.data)) as decoded:
            assert decoded.format == "PNG"
    # The fake colours each image of a response differently: the order of `data` is kept.
    colours = [Image.open(io.BytesIO(o.image.data)).getpixel((0, 0)) for o in outcomes if o.image]
    assert colours == [(0, 100, 200), (10, 100, 200)]


async def test_n_beyond_per_call_limit_makes_parallel_calls(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    one_per_call = MODEL.model_copy(update={"max_images_per_call": 1})
    fake.queue(*(success(delay=0.3) for _ in range(4)))

    started = time.monotonic()
    outcomes = await runner.run(provider, one_per_call, spec(count=4))
    elapsed = time.monotonic() - started

    assert len(fake.requests) == 4
    assert all(r.json is not None and r.json["n"] == 1 for r in fake.requests)
    assert fake.max_in_flight == 4
    assert elapsed < 4 * 0.3  # they overlapped rather than ran one after another
    assert [o.index for o in outcomes] == [0, 1, 2, 3]
    assert all(o.image is not None and o.error is None for o in outcomes)


async def test_rate_limit_is_retried_after_retry_after(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(rate_limited(retry_after="0"))

    outcomes = await runner.run(provider, MODEL, spec())

    assert len(fake.requests) == 2
    assert len(outcomes) == 1 and outcomes[0].image is not None


async def test_rate_limit_reports_retry_after_seconds(
    fake: FakeOpenAI, provider: OpenAIImagesProvider
) -> None:
    fake.queue(rate_limited(retry_after="7"))

    with pytest.raises(RateLimited) as caught:
        await provider.generate(call(), None)

    assert caught.value.retry_after == 7.0
    assert caught.value.retryable


async def test_server_errors_exhaust_retries(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(*(server_error() for _ in range(POLICY.max_retries + 1)))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == POLICY.max_retries + 1
    assert_no_key(error)


async def test_content_refusal_is_not_retried(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(moderation_blocked())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ContentRefused)
    assert error.user_message == "The image service declined this prompt under its content policy."
    assert "moderation_blocked" in error.detail
    assert len(fake.requests) == 1
    assert_no_key(error)


async def test_bad_request_is_not_retried(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    fake.queue(bad_request())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert len(fake.requests) == 1


async def test_wrong_key_is_an_auth_error_and_never_leaks(fake: FakeOpenAI, runner: ProviderRunner) -> None:
    wrong_key = "sk-wrong-key-that-must-not-leak-42"
    provider = OpenAIImagesProvider(SecretStr(wrong_key), fake.base_url)
    try:
        error = only_error(await runner.run(provider, MODEL, spec()))
    finally:
        await provider.aclose()

    assert isinstance(error, ProviderAuthError)
    assert error.user_message == (
        "The image service rejected the bot's credentials. The operator has been told."
    )
    assert len(fake.requests) == 1
    assert "invalid_api_key" in error.detail
    assert_no_key(error, wrong_key)
    assert "sk-wrong" not in error.detail


async def test_runner_timeout_is_unavailable(fake: FakeOpenAI, provider: OpenAIImagesProvider) -> None:
    policy = RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.2)
    runner = ProviderRunner(max_calls_in_flight=8, policy=policy)
    fake.queue(slow(1.0), slow(1.0))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == 2


async def test_http_timeout_is_unavailable(fake: FakeOpenAI) -> None:
    fake.queue(slow(1.0))
    async with httpx.AsyncClient(timeout=0.2) as http:
        provider = OpenAIImagesProvider(SecretStr(API_KEY), fake.base_url, http=http)
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.generate(call(), None)
        await provider.aclose()  # not its client: must leave it open
        assert not http.is_closed

    assert caught.value.detail.startswith("timeout")
    assert_no_key(caught.value)


async def test_unreachable_service_is_unavailable() -> None:
    provider = OpenAIImagesProvider(SecretStr(API_KEY), f"http://127.0.0.1:{closed_port()}/v1")
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.generate(call(), None)
    finally:
        await provider.aclose()

    assert caught.value.retryable
    assert_no_key(caught.value)


@pytest.mark.parametrize("kind", ["not_json", "no_data", "bad_base64", "not_image"])
async def test_malformed_body_is_unavailable(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, kind: str
) -> None:
    fake.queue(malformed(kind))

    with pytest.raises(ProviderUnavailable) as caught:
        await provider.generate(call(), None)

    assert caught.value.detail.startswith("malformed response")
    assert_no_key(caught.value)


async def test_variation_posts_the_image_to_edits(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    source = png_bytes(32, 32, color=(1, 2, 3))

    variation = spec(aspect_ratio="3:2", input_image=InputImage(source, "image/png"))

    outcomes = await runner.run(provider, MODEL, variation)

    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.path == "/v1/images/edits"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json is None
    width, height = provider.size_for(MODEL, "3:2")
    assert request.fields == {
        "model": "gpt-image-2",
        "prompt": "a lighthouse at dusk, oil painting",
        "n": "1",
        "size": f"{width}x{height}",
        "safety_identifier": "user-hash-abc123",
        "quality": "low",
        "output_format": "png",
    }
    [upload] = request.files["image[]"]
    assert upload.data == source
    assert upload.content_type == "image/png"
    assert outcomes[0].image is not None
    assert (outcomes[0].image.width, outcomes[0].image.height) == (width, height)


@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_size_for_flexible_models(aspect_ratio: str) -> None:
    provider = OpenAIImagesProvider(SecretStr(API_KEY), "http://127.0.0.1:1/v1")
    width, height = provider.size_for(MODEL, aspect_ratio)

    assert width % 16 == 0 and height % 16 == 0
    assert 1 / 3 <= width / height <= 3
    assert abs(width * height - 1024 * 1024) / (1024 * 1024) < 0.05
    rw, rh = ratio_parts(aspect_ratio)
    assert abs(width / height - rw / rh) < 0.03


def test_size_for_fixed_size_models() -> None:
    provider = OpenAIImagesProvider(SecretStr(API_KEY), "http://127.0.0.1:1/v1")
    mini = MODEL.model_copy(update={"provider_model": "gpt-image-1-mini"})

    assert provider.size_for(mini, "1:1") == (1024, 1024)
    assert provider.size_for(mini, "16:9") == (1536, 1024)
    assert provider.size_for(mini, "3:4") == (1024, 1536)


def test_available_needs_a_key() -> None:
    assert OpenAIImagesProvider(SecretStr(API_KEY), "http://127.0.0.1:1/v1").available()
    assert not OpenAIImagesProvider(None, "http://127.0.0.1:1/v1").available()
    assert not OpenAIImagesProvider(SecretStr(""), "http://127.0.0.1:1/v1").available()


async def test_missing_key_fails_without_a_request(fake: FakeOpenAI) -> None:
    provider = OpenAIImagesProvider(None, fake.base_url)
    try:
        with pytest.raises(ProviderAuthError):
            await provider.generate(call(), None)
    finally:
        await provider.aclose()

    assert fake.requests == []


async def test_an_edit_of_several_pictures_posts_one_image_part_each(
    fake: FakeOpenAI, provider: OpenAIImagesProvider, runner: ProviderRunner
) -> None:
    photos = (InputImage(png_bytes(16, 16, color=(9, 9, 9)), "image/png"),
              InputImage(png_bytes(20, 10, color=(1, 1, 1)), "image/jpeg"))

    [outcome] = await runner.run(provider, MODEL, spec(input_images=photos))

    [request] = fake.requests
    assert request.path == "/v1/images/edits"
    uploads = request.files["image[]"]
    assert [u.data for u in uploads] == [p.data for p in photos]
    assert [u.content_type for u in uploads] == ["image/png", "image/jpeg"]
    assert outcome.image is not None
