"""GatewayProvider (chat completions with image output) against a fake OpenRouter-style gateway."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
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
from bot.core.providers.gateway import GatewayProvider
from bot.core.providers.runner import ImageOutcome, ProviderRunner, RetryPolicy
from tests.fakes.gateway_server import (
    FakeGateway,
    chunk,
    content_filtered,
    fake_gateway_server,
    insufficient_credits,
    moderation_flagged,
    rate_limited,
    server_error,
    slow,
    streamed,
    text_only,
)
from tests.fakes.http_server import png_bytes
from tests.plugins.providers import POLICY, PROMPT, Previews, spec

API_KEY = "sk-or-v1-0123456789abcdefSECRET"
MODEL = ModelSpec(
    name="nano-banana",
    provider="gateway",
    provider_model="google/gemini-2.5-flash-image",
    max_images_per_call=1,
    supports_input_image=True,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGateway]:
    async with fake_gateway_server(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeGateway, http: httpx.AsyncClient) -> AsyncIterator[GatewayProvider]:
    provider = GatewayProvider(SecretStr(API_KEY), fake.base_url, http=http)
    yield provider
    await provider.aclose()


def call(model: ModelSpec = MODEL) -> ProviderCall:
    return ProviderCall(model, PROMPT, None, 1, "1:1", 1024, 1024, None, (), "user-hash-abc123")


def only_error(outcomes: list[ImageOutcome]) -> ProviderError:
    assert len(outcomes) == 1 and outcomes[0].image is None and outcomes[0].error is not None
    return outcomes[0].error


def assert_no_key(error: ProviderError, key: str = API_KEY) -> None:
    for text in (str(error), repr(error), error.user_message, error.detail):
        assert key not in text


async def test_success_sends_the_chat_completions_wire_format(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    [outcome] = await runner.run(provider, MODEL, spec())

    [request] = fake.requests
    assert request.path == "/api/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.json == {
        "model": "google/gemini-2.5-flash-image",
        "messages": [{"role": "user", "content": PROMPT}],
        "modalities": ["image", "text"],
        "user": "user-hash-abc123",
    }
    assert outcome.image is not None
    image = outcome.image
    assert (image.mime_type, image.width, image.height, image.seed) == ("image/png", 1024, 1024, None)
    assert image.metadata["text"] == "Here is a lighthouse at dusk."
    assert image.metadata["model"] == "google/gemini-2.5-flash-image"
    assert image.metadata["usage"]["total_tokens"] == 1313


async def test_aspect_ratio_goes_in_image_config(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    [outcome] = await runner.run(provider, MODEL, spec(aspect_ratio="16:9"))

    assert fake.requests[0].json["image_config"] == {"aspect_ratio": "16:9"}
    assert outcome.image is not None and (outcome.image.width, outcome.image.height) == (1344, 768)
    assert provider.size_for(MODEL, "16:9") == (1344, 768)
    assert provider.size_for(MODEL, "2:3") == (832, 1248)


async def test_catalogue_options_shape_the_request(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    flux = MODEL.model_copy(
        update={
            "provider_model": "black-forest-labs/flux.2-pro",
            "options": {"image_only": True, "image_size": "2K", "temperature": 0.5},
        }
    )
    await runner.run(provider, flux, spec())

    body = fake.requests[0].json
    assert body["modalities"] == ["image"]
    assert body["image_config"] == {"image_size": "2K"}
    assert body["temperature"] == 0.5
    assert "image_only" not in body and "image_size" not in body


async def test_n_beyond_per_call_limit_makes_parallel_calls(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(*(slow(0.15) for _ in range(3)))

    started = time.monotonic()
    outcomes = await runner.run(provider, MODEL, spec(count=3))

    assert time.monotonic() - started < 3 * 0.15
    assert len(fake.requests) == 3 and fake.max_in_flight == 3
    assert all("n" not in r.json for r in fake.requests)
    assert [o.index for o in outcomes] == [0, 1, 2] and all(o.image is not None for o in outcomes)


async def test_several_images_in_one_call_use_n(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    two_per_call = MODEL.model_copy(update={"max_images_per_call": 2})

    outcomes = await runner.run(provider, two_per_call, spec(count=2))

    [request] = fake.requests
    assert request.json["n"] == 2
    colours = [Image.open(io.BytesIO(o.image.data)).getpixel((0, 0)) for o in outcomes if o.image]
    assert colours == [(0, 100, 200), (10, 100, 200)]


async def test_a_watched_call_is_streamed_without_previewing_the_final_image(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    previews = Previews()

    [outcome] = await runner.run(provider, MODEL, spec(), previews)

    assert fake.requests[0].json["stream"] is True
    assert outcome.image is not None
    # A streamed image is the final image itself: a preview of it would be the same picture sent twice.
    assert previews.received == []
    assert outcome.image.metadata["text"] == "Here is a lighthouse at dusk."
    assert outcome.image.metadata["usage"]["total_tokens"] == 1313


async def test_variation_sends_the_input_image_as_an_image_url_part(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    source = png_bytes(32, 32, color=(1, 2, 3))

    [outcome] = await runner.run(provider, MODEL, spec(input_image=InputImage(source, "image/png")))

    [message] = fake.requests[0].json["messages"]
    text, image = message["content"]
    assert text == {"type": "text", "text": PROMPT}
    assert image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.partition(",")[2]) == source
    assert outcome.image is not None


async def test_seed_is_sent_and_recorded_when_the_model_takes_one(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    seeded = MODEL.model_copy(update={"supports_seed": True})

    outcomes = await runner.run(provider, seeded, spec(count=2))

    assert sorted(r.json["seed"] for r in fake.requests) == [1234, 1235]
    assert [o.image.seed for o in outcomes if o.image] == [1234, 1235]


async def test_moderation_flag_is_content_refused(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(moderation_flagged())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ContentRefused)
    assert error.user_message == "The image service declined this prompt under its content policy."
    assert "violence" in error.detail
    assert len(fake.requests) == 1


async def test_upstream_safety_stop_is_content_refused(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(content_filtered())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ContentRefused)
    assert "IMAGE_SAFETY" in error.detail
    assert len(fake.requests) == 1


async def test_a_text_only_answer_is_not_retried(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(text_only())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert error.user_message == "The model finished without making an image. Try rephrasing the prompt."
    assert "What style" in error.detail
    assert len(fake.requests) == 1


async def test_rate_limit_is_retried_after_retry_after(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(rate_limited(retry_after="0"))

    [outcome] = await runner.run(provider, MODEL, spec())

    assert len(fake.requests) == 2
    assert outcome.image is not None


async def test_rate_limit_reports_retry_after_seconds(fake: FakeGateway, provider: GatewayProvider) -> None:
    fake.queue(rate_limited(retry_after="7"))

    with pytest.raises(RateLimited) as caught:
        await provider.generate(call(), None)

    assert caught.value.retry_after == 7.0


async def test_server_errors_exhaust_retries(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(*(server_error() for _ in range(POLICY.max_retries + 1)))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == POLICY.max_retries + 1
    assert "Google" in error.detail and "upstream said" not in error.detail  # `raw` stays out
    assert_no_key(error)


async def test_an_error_inside_the_stream_is_retried(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    failure = chunk({"content": ""}, finish="error", error={"code": 502, "message": "Upstream error from Google"})
    fake.queue(streamed(chunk({"role": "assistant", "content": "Here"}), failure))
    previews = Previews()

    [outcome] = await runner.run(provider, MODEL, spec(), previews)

    assert len(fake.requests) == 2
    assert outcome.image is not None and previews.received == []


async def test_runner_timeout_is_unavailable(fake: FakeGateway, provider: GatewayProvider) -> None:
    runner = ProviderRunner(8, RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.1))
    fake.queue(slow(1.0), slow(1.0))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.requests) == 2


async def test_wrong_key_is_an_auth_error_and_never_leaks(fake: FakeGateway, runner: ProviderRunner) -> None:
    wrong_key = "sk-or-v1-wrong-key-that-must-not-leak"
    provider = GatewayProvider(SecretStr(wrong_key), fake.base_url)
    try:
        error = only_error(await runner.run(provider, MODEL, spec()))
    finally:
        await provider.aclose()

    assert isinstance(error, ProviderAuthError)
    assert len(fake.requests) == 1
    assert_no_key(error, wrong_key)


async def test_no_credit_is_an_operator_error(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    fake.queue(insufficient_credits())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderAuthError)
    assert error.user_message == "The image service account is out of credit. The operator has been told."
    assert len(fake.requests) == 1


async def test_missing_key_is_unavailable_and_sends_nothing(fake: FakeGateway) -> None:
    provider = GatewayProvider(None, fake.base_url)
    assert not provider.available()
    with pytest.raises(ProviderAuthError):
        await provider.generate(call(), None)
    await provider.aclose()
    assert fake.requests == []


async def test_an_edit_of_several_pictures_sends_one_image_url_part_each(
    fake: FakeGateway, provider: GatewayProvider, runner: ProviderRunner
) -> None:
    photos = (InputImage(png_bytes(8, 8, color=(1, 2, 3)), "image/png"),
              InputImage(png_bytes(9, 9, color=(4, 5, 6)), "image/jpeg"))

    [outcome] = await runner.run(provider, MODEL, spec(input_images=photos))

    [message] = fake.requests[0].json["messages"]
    text, *images = message["content"]
    assert text == {"type": "text", "text": PROMPT}
    urls = [i["image_url"]["url"] for i in images]
    assert [u.partition(";")[0] for u in urls] == ["data:image/png", "data:image/jpeg"]
    assert [base64.b64decode(u.partition(",")[2]) for u in urls] == [p.data for p in photos]
    assert outcome.image is not None
