"""Automatic1111Provider against a fake AUTOMATIC1111 web UI API on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from bot.bootstrap import build_providers
from bot.core.catalogue import ASPECT_RATIOS, ModelSpec
from bot.core.errors import ProviderAuthError, ProviderBadRequest, ProviderError, ProviderUnavailable
from bot.core.providers.automatic1111 import Automatic1111Provider
from bot.core.providers.base import InputImage, ratio_parts
from bot.core.providers.runner import ImageOutcome, ProviderRunner, RetryPolicy
from tests.conftest import make_settings
from tests.fakes.a1111_server import (
    RANDOM_SEED,
    FakeA1111,
    fake_a1111_server,
    infotext,
    out_of_memory,
    png_with_parameters,
    proxy_rate_limited,
    server_error,
    slow,
    validation_error,
)
from tests.fakes.http_server import Scripted, png_bytes
from tests.plugins.providers import POLICY, PROMPT, Previews, spec

MODEL = ModelSpec(
    name="sd",
    provider="automatic1111",
    provider_model="default",
    max_images_per_call=4,
    supports_seed=True,
    supports_negative_prompt=True,
    supports_input_image=True,
    options={"steps": 30, "cfg_scale": 7, "sampler_name": "Euler a"},
)
PASSWORD = "hunter2-a1111-password"


@pytest.fixture
async def fake() -> AsyncIterator[FakeA1111]:
    async with fake_a1111_server() as server:
        yield server


@pytest.fixture
async def provider(fake: FakeA1111, http: httpx.AsyncClient) -> AsyncIterator[Automatic1111Provider]:
    provider = Automatic1111Provider(fake.base_url, http=http, progress_interval=0.03)
    yield provider
    await provider.aclose()


def only_error(outcomes: list[ImageOutcome]) -> ProviderError:
    assert len(outcomes) == 1 and outcomes[0].image is None and outcomes[0].error is not None
    return outcomes[0].error


async def test_txt2img_sends_the_webui_payload_and_reads_seeds_back(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    outcomes = await runner.run(provider, MODEL, spec(count=2, negative="blurry, text"))

    [request] = fake.requests
    assert request.path == "/sdapi/v1/txt2img"
    assert request.json == {
        "steps": 30,
        "cfg_scale": 7,
        "sampler_name": "Euler a",
        "prompt": PROMPT,
        "negative_prompt": "blurry, text",
        "seed": 1234,
        "batch_size": 2,
        "n_iter": 1,
        "width": 1024,
        "height": 1024,
        "send_images": True,
        "save_images": False,
    }
    assert [o.index for o in outcomes] == [0, 1]
    images = [o.image for o in outcomes if o.image]
    assert [i.seed for i in images] == [1234, 1235]
    assert [(i.mime_type, i.width, i.height) for i in images] == [("image/png", 1024, 1024)] * 2
    assert images[0].metadata["model"] == "sd_xl_base_1.0"
    assert images[0].metadata["steps"] == 30


async def test_a_random_seed_is_read_back_from_info(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    unseeded = MODEL.model_copy(update={"supports_seed": False})

    [outcome] = await runner.run(provider, unseeded, spec())

    assert fake.requests[0].json["seed"] == -1
    assert outcome.image is not None and outcome.image.seed == RANDOM_SEED


def answer_without_all_seeds(count: int, info: dict[str, object]) -> Scripted:
    """What a fork or a proxy may answer: the images, and an `info` without `all_seeds`."""
    images = [base64.b64encode(png_bytes(8, 8, (i, 0, 0))).decode() for i in range(count)]
    return Scripted(body={"images": images, "parameters": {}, "info": json.dumps(info)})


async def test_without_all_seeds_the_seed_sent_is_the_seed_of_each_image(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.queue(answer_without_all_seeds(2, {"sd_model_name": "sd_xl_base_1.0"}))

    outcomes = await runner.run(provider, MODEL, spec(count=2))

    assert [o.image.seed for o in outcomes if o.image] == [1234, 1235]


async def test_a_random_seed_the_answer_reports_only_as_its_first_seed_is_still_read(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    unseeded = MODEL.model_copy(update={"supports_seed": False})
    fake.queue(answer_without_all_seeds(2, {"seed": 42}))

    outcomes = await runner.run(provider, unseeded, spec(count=2))

    assert fake.requests[0].json["seed"] == -1
    assert [o.image.seed for o in outcomes if o.image] == [42, 43]


async def test_a_random_seed_the_answer_does_not_report_is_no_seed(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    unseeded = MODEL.model_copy(update={"supports_seed": False})
    fake.queue(answer_without_all_seeds(1, {}))

    [outcome] = await runner.run(provider, unseeded, spec())

    # -1 was sent and nothing says what it became: no seed rather than a made-up one.
    assert outcome.image is not None and outcome.image.seed is None


async def test_a_named_checkpoint_is_selected_and_kept_loaded(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    sdxl = MODEL.model_copy(update={"provider_model": "sd_xl_base_1.0"})

    await runner.run(provider, sdxl, spec())

    body = fake.requests[0].json
    assert body["override_settings"] == {"sd_model_checkpoint": "sd_xl_base_1.0"}
    assert body["override_settings_restore_afterwards"] is False


async def test_calls_beyond_the_batch_wait_for_the_one_job_slot(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    one_per_call = MODEL.model_copy(update={"max_images_per_call": 1})
    fake.queue(*(slow(0.1) for _ in range(3)))

    outcomes = await runner.run(provider, one_per_call, spec(count=3))

    assert len(fake.requests) == 3
    assert fake.max_jobs_running == 1  # the runner allowed 8, the provider held them to 1
    assert sorted(r.json["seed"] for r in fake.requests) == [1234, 1235, 1236]
    assert [o.image.seed for o in outcomes if o.image] == [1234, 1235, 1236]


async def test_the_concurrency_limit_is_configurable(
    fake: FakeA1111, runner: ProviderRunner, http: httpx.AsyncClient
) -> None:
    provider = Automatic1111Provider(fake.base_url, max_concurrency=2, http=http)
    one_per_call = MODEL.model_copy(update={"max_images_per_call": 1})
    fake.queue(*(slow(0.1) for _ in range(3)))
    try:
        await runner.run(provider, one_per_call, spec(count=3))
    finally:
        await provider.aclose()

    assert fake.max_jobs_running == 2


async def test_a_farm_behind_one_url_gets_as_many_requests_at_once_as_configured(
    fake: FakeA1111, tmp_path: Path
) -> None:
    # Above httpx's default pool of 100 connections (the provider's own client must make room), below the
    # fake server's listen backlog.
    settings = make_settings(tmp_path, a1111_base_url=fake.base_url, a1111_max_concurrency=120, max_provider_calls=400)
    provider = build_providers(settings)["automatic1111"]
    runner = ProviderRunner(settings.max_provider_calls, POLICY)
    small = MODEL.model_copy(update={"max_images_per_call": 1, "options": {"base_size": 64}})
    fake.queue(*(slow(0.5) for _ in range(130)))
    try:
        outcomes = await runner.run(provider, small, spec(count=130))
    finally:
        await provider.aclose()

    assert all(o.image is not None for o in outcomes)
    assert fake.max_jobs_running == 120


def test_a1111_concurrency_is_capped_only_far_above_a_farm(tmp_path: Path) -> None:
    assert make_settings(tmp_path, a1111_max_concurrency=256).a1111_max_concurrency == 256
    with pytest.raises(ValidationError):
        make_settings(tmp_path, a1111_max_concurrency=257)


async def test_variation_is_img2img_with_the_denoising_strength(
    fake: FakeA1111, runner: ProviderRunner, http: httpx.AsyncClient
) -> None:
    provider = Automatic1111Provider(fake.base_url, denoising_strength=0.45, http=http)
    source = png_bytes(32, 32, color=(1, 2, 3))
    try:
        variation = spec(aspect_ratio="3:2", input_image=InputImage(source, "image/png"))
        [outcome] = await runner.run(provider, MODEL, variation)
    finally:
        await provider.aclose()

    [request] = fake.requests
    assert request.path == "/sdapi/v1/img2img"
    assert [base64.b64decode(i) for i in request.json["init_images"]] == [source]
    assert request.json["denoising_strength"] == 0.45
    assert request.json["seed"] == 1234
    assert outcome.image is not None and outcome.image.seed == 1234
    assert outcome.image.metadata["denoising_strength"] == 0.45


async def test_the_catalogue_can_set_the_denoising_strength(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    gentle = MODEL.model_copy(update={"options": {"denoising_strength": 0.3}})

    await runner.run(provider, gentle, spec(input_image=InputImage(png_bytes(8, 8), "image/png")))

    assert fake.requests[0].json["denoising_strength"] == 0.3


async def test_subseed_variation_reuses_the_parents_seed(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    by_subseed = MODEL.model_copy(update={"options": {"variation": "subseed", "subseed_strength": 0.25}})
    parent = png_with_parameters(64, 64, infotext("a lighthouse", "", 777, 64, 64), (5, 5, 5))

    [outcome] = await runner.run(provider, by_subseed, spec(input_image=InputImage(parent, "image/png")))

    [request] = fake.requests
    assert request.path == "/sdapi/v1/txt2img"
    assert (request.json["seed"], request.json["subseed"], request.json["subseed_strength"]) == (777, 1234, 0.25)
    assert "init_images" not in request.json and "variation" not in request.json
    assert outcome.image is not None
    assert outcome.image.seed == 777
    assert (outcome.image.metadata["subseed"], outcome.image.metadata["subseed_strength"]) == (1234, 0.25)


async def test_subseed_variation_without_a_parent_seed_falls_back_to_img2img(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    by_subseed = MODEL.model_copy(update={"options": {"variation": "subseed"}})

    await runner.run(provider, by_subseed, spec(input_image=InputImage(png_bytes(8, 8), "image/png")))

    assert fake.requests[0].path == "/sdapi/v1/img2img"


async def test_progress_current_image_becomes_one_preview_per_picture(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    first, second = png_bytes(16, 16, color=(50, 0, 0)), png_bytes(16, 16, color=(0, 50, 0))
    fake.preview_frames = [first, first, second]
    fake.queue(slow(0.3))
    previews = Previews()

    [outcome] = await runner.run(provider, MODEL, spec(), previews)

    polls = [r for r in fake.requests if r.path == "/sdapi/v1/progress"]
    assert len(polls) >= 4
    assert all(r.query == {"skip_current_image": "false"} for r in polls)
    assert previews.received == [(first, "image/png"), (second, "image/png")]
    assert outcome.image is not None


async def test_without_a_preview_callback_progress_is_not_polled(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.preview_frames = [png_bytes(16, 16)]
    fake.queue(slow(0.1))

    await runner.run(provider, MODEL, spec())

    assert [r.path for r in fake.requests] == ["/sdapi/v1/txt2img"]


async def test_out_of_memory_is_not_retried(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.queue(out_of_memory())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert error.user_message == "The image server ran out of GPU memory. Try fewer images at once."
    assert "CUDA out of memory" in error.detail
    assert len(fake.requests) == 1


async def test_server_errors_exhaust_retries(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.queue(*(server_error() for _ in range(POLICY.max_retries + 1)))

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderUnavailable)
    assert "RuntimeError" in error.detail
    assert len(fake.requests) == POLICY.max_retries + 1


async def test_a_proxys_429_is_retried_after_retry_after(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.queue(proxy_rate_limited("0"))

    [outcome] = await runner.run(provider, MODEL, spec())

    assert len(fake.requests) == 2 and outcome.image is not None


async def test_validation_error_is_a_bad_request(
    fake: FakeA1111, provider: Automatic1111Provider, runner: ProviderRunner
) -> None:
    fake.queue(validation_error())

    error = only_error(await runner.run(provider, MODEL, spec()))

    assert isinstance(error, ProviderBadRequest)
    assert "not a valid integer" in error.detail
    assert len(fake.requests) == 1


async def test_a_server_without_the_api_is_a_bad_request(
    fake: FakeA1111, runner: ProviderRunner, http: httpx.AsyncClient
) -> None:
    provider = Automatic1111Provider(f"{fake.base_url}/not-the-webui", http=http)
    try:
        error = only_error(await runner.run(provider, MODEL, spec()))
    finally:
        await provider.aclose()

    assert isinstance(error, ProviderBadRequest)
    assert "--api" in error.detail


async def test_timeout_interrupts_the_abandoned_job(fake: FakeA1111, provider: Automatic1111Provider) -> None:
    runner = ProviderRunner(8, RetryPolicy(max_retries=1, base_delay=0.01, timeout=0.1))
    fake.queue(slow(1.0), slow(1.0))

    error = only_error(await runner.run(provider, MODEL, spec(), Previews()))

    assert isinstance(error, ProviderUnavailable)
    assert len(fake.generation_requests()) == 2
    assert fake.interrupts == 2  # the server stopped rendering each image nobody would see


async def test_basic_auth_is_sent_to_every_endpoint(runner: ProviderRunner) -> None:
    async with fake_a1111_server(credentials=("bot", PASSWORD)) as fake:
        fake.preview_frames = [png_bytes(16, 16)]
        fake.queue(slow(0.15))
        provider = Automatic1111Provider(fake.base_url, "bot", SecretStr(PASSWORD), progress_interval=0.03)
        previews = Previews()
        try:
            [outcome] = await runner.run(provider, MODEL, spec(), previews)
        finally:
            await provider.aclose()

    assert outcome.image is not None
    assert len(previews.received) == 1  # the progress poll was let in too


async def test_a_wrong_password_is_an_auth_error_and_never_leaks(runner: ProviderRunner) -> None:
    wrong = "wrong-password-must-not-leak"
    async with fake_a1111_server(credentials=("bot", PASSWORD)) as fake:
        provider = Automatic1111Provider(fake.base_url, "bot", SecretStr(wrong))
        try:
            error = only_error(await runner.run(provider, MODEL, spec()))
        finally:
            await provider.aclose()
        assert len(fake.requests) == 1

    assert isinstance(error, ProviderAuthError)
    assert "Incorrect username or password" in error.detail
    for text in (str(error), error.detail, error.user_message):
        assert wrong not in text


@pytest.mark.parametrize("aspect_ratio", ASPECT_RATIOS)
def test_size_for_is_multiples_of_8_around_the_base_size(aspect_ratio: str) -> None:
    provider = Automatic1111Provider("http://127.0.0.1:1")
    for base in (1024, 512):
        model = MODEL.model_copy(update={"options": {"base_size": base}})
        width, height = provider.size_for(model, aspect_ratio)
        assert width % 8 == 0 and height % 8 == 0
        assert abs(width * height - base * base) / (base * base) < 0.05
        rw, rh = ratio_parts(aspect_ratio)
        assert abs(width / height - rw / rh) < 0.03


def test_available_needs_a_base_url() -> None:
    assert Automatic1111Provider("http://127.0.0.1:7860").available()
    assert not Automatic1111Provider(None).available()
    assert not Automatic1111Provider("").available()


async def test_waiting_for_the_servers_slot_does_not_count_against_the_timeout(
    fake: FakeA1111, http: httpx.AsyncClient
) -> None:
    # Three calls of 0.2 s through one slot take 0.6 s; each call's own timeout is 0.4 s and still holds.
    runner = ProviderRunner(8, RetryPolicy(max_retries=0, base_delay=0.01, timeout=0.4))
    provider = Automatic1111Provider(fake.base_url, max_concurrency=1, http=http)
    one_per_call = MODEL.model_copy(update={"max_images_per_call": 1})
    fake.queue(*(slow(0.2) for _ in range(3)))
    try:
        outcomes = await runner.run(provider, one_per_call, spec(count=3))
    finally:
        await provider.aclose()
    assert [o.error for o in outcomes] == [None, None, None]
    assert fake.max_jobs_running == 1


async def test_an_edit_of_a_photo_is_img2img_even_with_subseed_variations(
    fake: FakeA1111, runner: ProviderRunner, http: httpx.AsyncClient
) -> None:
    # A user's photo carries no A1111 infotext (and its metadata is stripped anyway): img2img, not subseed.
    provider = Automatic1111Provider(fake.base_url, denoising_strength=0.6, http=http)
    by_subseed = MODEL.model_copy(update={"options": {"variation": "subseed"}})
    photo = png_bytes(16, 16, color=(7, 8, 9))
    try:
        await runner.run(provider, by_subseed, spec(input_images=(InputImage(photo, "image/png"),)))
    finally:
        await provider.aclose()

    [request] = fake.requests
    assert request.path == "/sdapi/v1/img2img"
    assert [base64.b64decode(i) for i in request.json["init_images"]] == [photo]
    assert request.json["denoising_strength"] == 0.6
