"""GeminiProvider (native generateContent) against a fake Gemini API on 127.0.0.1."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from bot.core.catalogue import ModelSpec
from bot.core.errors import (
    ContentRefused,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from bot.core.providers.base import InputImage, ProviderCall
from bot.core.providers.gemini import GeminiProvider
from bot.core.providers.runner import ImageOutcome, ProviderRunner, RetryPolicy
from tests.fakes.gemini_server import (
    FakeGemini,
    bad_argument,
    fake_gemini_server,
    finished_without_image,
    overloaded,
    prompt_blocked,
    rate_limited,
    slow,
)
from tests.fakes.http_server import png_bytes
from tests.plugins.providers import POLICY, PROMPT, spec

API_KEY = "AIzaSyTEST-0123456789abcdefghijklmnopq"
MODEL = ModelSpec(
    name="gemini-flash-image",
    provider="gemini",
    provider_model="gemini-2.5-flash-image",
    max_images_per_call=1,
    supports_input_image=True,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with fake_gemini_server(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeGemini, http: httpx.AsyncClient) -> AsyncIterator[GeminiProvider]:
    provider = GeminiProvider(SecretStr(API_KEY), fake.base_url, http=http)
    yield provider
    await provider.aclose()


def call() -> ProviderCall:
    return ProviderCall(MODEL, PROMPT, None, 1, "1:1", 1024, 1024, None, (), "user-hash-abc123")


def only_error(outcomes: list[ImageOutcome]) -> ProviderError:
    assert len(outcomes) == 1 and outcomes[0].image is None and outcomes[0].error is not None
    return outcomes[0].error


def assert_no_key(error: ProviderError, key: str = API_KEY) -> None:
    for text in (str(error), repr(error), error.user_message, error.detail):
        assert key not in text


async def test_success_sends_generate_content(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    [outcome] = await runner.run(provider, MODEL, spec(aspect_ratio="16:9"))

    [request] = fake.requests
    assert request.path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert request.query == {}  # the key never travels in the URL
    assert request.json == {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "16:9"}},
    }
    assert outcome.image is not None
    image = outcome.image
    assert (image.mime_type, image.width, image.height, image.seed) == ("image/png", 1344, 768, None)
    assert provider.size_for(MODEL, "16:9") == (1344, 768)
    assert image.metadata["text"] == "Here is your lighthouse."
    assert image.metadata["model"] == "gemini-2.5-flash-image"
    assert image.metadata["usage"]["totalTokenCount"] == 1302


async def test_options_seed_and_candidate_count(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    pro = MODEL.model_copy(
        update={
            "provider_model": "gemini-3-pro-image-preview",
            "max_images_per_call": 2,
            "supports_seed": True,
            "options": {"image_size": "2K", "temperature": 0.4},
        }
    )

    outcomes = await runner.run(provider, pro, spec(count=2))

    config = fake.requests[0].json["generationConfig"]
    assert config == {
        "temperature": 0.4,
        "responseModalities": ["TEXT", "IMAGE"],
        "imageConfig": {"aspectRatio": "1:1", "imageSize": "2K"},
        "candidateCount": 2,
        "seed": 1234,
    }
    assert [o.index for o in outcomes] == [0, 1] and all(o.image is not None for o in outcomes)
    # Two candidates of one seeded call can't both have "the" seed.
    assert [o.image.seed for o in outcomes if o.image] == [None, None]


async def test_seed_read_back_for_single_image_calls(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    seeded = MODEL.model_copy(update={"supports_seed": True})

    outcomes = await runner.run(provider, seeded, spec(count=2))

    assert sorted(r.json["generationConfig"]["seed"] for r in fake.requests) == [1234, 1235]
    assert [o.image.seed for o in outcomes if o.image] == [1234, 1235]


async def test_n_beyond_per_call_limit_makes_parallel_calls(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    fake.queue(*(slow(0.15) for _ in range(3)))

    started = time.monotonic()
    outcomes = await runner.run(provider, MODEL, spec(count=3))

    assert time.monotonic() - started < 3 * 0.15
    assert len(fake.requests) == 3 and fake.max_in_flight == 3
    assert all("candidateCount" not in r.json["generationConfig"] for r in fake.requests)
    assert [o.index for o in outcomes] == [0, 1, 2] and all(o.image is not None for o in outcomes)


async def test_variation_sends_the_input_image_inline(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    source = png_bytes(24, 24, color=(4, 5, 6))

    [outcome] = await runner.run(provider, MODEL, spec(input_image=InputImage(source, "image/png")))

    [content] = fake.requests[0].json["contents"]
    text, image = content["parts"]
    assert text == {"text": PROMPT}
    assert image["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(image["inlineData"]["data"]) == source
    assert outcome.image is not None


@pytest.mark.parametrize("reason", ["PROHIBITED_CONTENT", "SAFETY", "OTHER"])
async def test_a_blocked_prompt_is_content_refused(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner, reason: str
) -> None:
    fake.queue(prompt_blocked(reason))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ContentRefused)
    assert reason in error.detail
    assert len(fake.requests) == 1


@pytest.mark.parametrize("reason", ["IMAGE_SAFETY", "SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"])
async def test_a_safety_finish_is_content_refused(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner, reason: str
) -> None:
    fake.queue(finished_without_image(reason))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ContentRefused)
    assert error.user_message == "The image service declined this prompt under its content policy."
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("reason", "text"), [("STOP", "What style would you like?"), ("NO_IMAGE", None)])
async def test_an_answer_without_an_image_is_not_retried(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner, reason: str, text: str | None
) -> None:
    fake.queue(finished_without_image(reason, text))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert reason in error.detail
    assert len(fake.requests) == 1


async def test_rate_limit_waits_the_retry_delay(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    fake.queue(rate_limited("0s"))

    [outcome] = await runner.run(provider, MODEL, spec())

    assert len(fake.requests) == 2 and outcome.image is not None


async def test_rate_limit_reports_retry_info(fake: FakeGemini, provider: GeminiProvider) -> None:
    fake.queue(rate_limited("17.5s"))

    with pytest.raises(RateLimited) as caught:
        await provider.generate(call(), None)

    assert caught.value.retry_after == 17.5
    assert "RESOURCE_EXHAUSTED" in caught.value.detail


async def test_overload_exhausts_retries(fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner) -> None:
    fake.queue(*(overloaded() for _ in range(POLICY.max_retries + 1)))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == POLICY.max_retries + 1
    assert "UNAVAILABLE" in error.detail
    assert_no_key(error)


async def test_bad_argument_is_not_retried(fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner) -> None:
    fake.queue(bad_argument())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert len(fake.requests) == 1


async def test_runner_timeout_is_unavailable(fake: FakeGemini, provider: GeminiProvider) -> None:
    runner = ProviderRunner(8, RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.1))
    fake.queue(slow(1.0), slow(1.0))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == 2


async def test_wrong_key_is_an_auth_error_though_google_says_400(fake: FakeGemini, runner: ProviderRunner) -> None:
    wrong_key = "AIzaSyWRONG-key-that-must-not-leak-000000"
    provider = GeminiProvider(SecretStr(wrong_key), fake.base_url)
    try:
        error = only_error(await runner.run(provider, MODEL, spec()))
    finally:
        await provider.aclose()

    assert isinstance(error, ProviderAuthError)
    assert "API_KEY_INVALID" in error.detail
    assert len(fake.requests) == 1
    assert_no_key(error, wrong_key)


async def test_missing_key_is_unavailable_and_sends_nothing(fake: FakeGemini) -> None:
    provider = GeminiProvider(None, fake.base_url)
    assert not provider.available()
    with pytest.raises(ProviderAuthError):
        await provider.generate(call(), None)
    await provider.aclose()
    assert fake.requests == []


async def test_an_edit_of_several_pictures_sends_one_inline_part_each(
    fake: FakeGemini, provider: GeminiProvider, runner: ProviderRunner
) -> None:
    photos = (InputImage(png_bytes(8, 8, color=(1, 2, 3)), "image/png"),
              InputImage(png_bytes(9, 9, color=(4, 5, 6)), "image/jpeg"))

    [outcome] = await runner.run(provider, MODEL, spec(input_images=photos))

    [content] = fake.requests[0].json["contents"]
    text, *images = content["parts"]
    assert text == {"text": PROMPT}
    assert [i["inlineData"]["mimeType"] for i in images] == ["image/png", "image/jpeg"]
    assert [base64.b64decode(i["inlineData"]["data"]) for i in images] == [p.data for p in photos]
    assert outcome.image is not None
