"""The shipped catalogue (DEFAULT_MODELS) as it is, through the providers the bot builds from its settings,
against the local fakes of each service: what a default entry claims is what goes on the wire, and what
it doesn't claim is never silently dropped."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.bootstrap import build_providers
from bot.core.catalogue import DEFAULT_MODELS, ModelSpec, available_models
from bot.core.providers.base import GeneratedImage, ImageProvider, InputImage, ratio_parts
from bot.core.providers.runner import GenerationSpec, ProviderRunner, warnings_for
from tests.conftest import make_settings
from tests.fakes.a1111_server import FakeA1111, fake_a1111_server
from tests.fakes.gateway_server import FakeGateway, fake_gateway_server
from tests.fakes.gemini_server import FakeGemini, fake_gemini_server
from tests.fakes.http_server import png_bytes
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.plugins.providers import spec

NEGATIVE = "blurry watermark xyzzy"
PARENT = png_bytes(48, 32, (1, 2, 3))
PARENT_B64 = base64.b64encode(PARENT).decode()
# A ratio the model claims must come back within this of the ratio (Gemini's table rounds 4:3 to 1184x864).
RATIO_TOLERANCE = 0.04


@dataclass
class Fakes:
    openai: FakeOpenAI
    gateway: FakeGateway
    gemini: FakeGemini
    a1111: FakeA1111

    def generation_requests(self, provider: str) -> list[dict[str, Any]]:
        """The bodies of the generation requests `provider` sent, each with its `_path`."""
        if provider == "openai":
            return [
                {"_path": r.path, "_files": r.files, **(r.json if r.json is not None else r.fields)}
                for r in self.openai.requests
            ]
        recorded = {
            "gateway": self.gateway.requests,
            "gemini": self.gemini.requests,
            "automatic1111": self.a1111.generation_requests(),
            "offline": [],
        }[provider]
        return [{"_path": r.path, **r.json} for r in recorded]

    def clear(self) -> None:
        for fake in (self.openai, self.gateway, self.gemini, self.a1111):
            fake.requests.clear()


@pytest.fixture(scope="module")
async def fakes() -> AsyncIterator[Fakes]:
    async with (
        fake_openai_server() as openai,
        fake_gateway_server() as gateway,
        fake_gemini_server() as gemini,
        fake_a1111_server() as a1111,
    ):
        yield Fakes(openai, gateway, gemini, a1111)


@pytest.fixture(scope="module")
async def providers(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, ImageProvider]]:
    settings = make_settings(
        Path(tmp_path_factory.mktemp("defaults")),
        openai_api_key="sk-test",
        openai_base_url=fakes.openai.base_url,
        gateway_api_key="sk-or-test",
        gateway_base_url=fakes.gateway.base_url,
        gemini_api_key="AIza-test",
        gemini_base_url=fakes.gemini.base_url,
        a1111_base_url=fakes.a1111.base_url,
    )
    assert settings.models == DEFAULT_MODELS
    built = build_providers(settings)
    yield built
    for provider in built.values():
        await provider.aclose()


@pytest.fixture(autouse=True)
def fresh(fakes: Fakes) -> None:
    fakes.clear()


async def run_one(
    runner: ProviderRunner, providers: dict[str, ImageProvider], model: ModelSpec, generation: GenerationSpec
) -> list[GeneratedImage]:
    outcomes = await runner.run(providers[model.provider], model, generation)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    return [o.image for o in outcomes if o.image is not None]


def sent_seed(provider: str, body: dict[str, Any]) -> int | None:
    if provider == "gemini":
        return body["generationConfig"].get("seed")
    if provider == "automatic1111":
        return None if body["seed"] == -1 else body["seed"]
    return body.get("seed")


def sent_count(provider: str, body: dict[str, Any]) -> int:
    if provider == "openai":
        return int(body["n"])
    if provider == "gemini":
        return int(body["generationConfig"].get("candidateCount", 1))
    if provider == "automatic1111":
        return int(body["batch_size"])
    return int(body.get("n", 1))


def sent_parent(provider: str, body: dict[str, Any]) -> bool:
    """Whether this request hands the model the parent image."""
    if provider == "openai":
        uploads = body["_files"].get("image[]", [])
        return body["_path"].endswith("/images/edits") and [u.data for u in uploads] == [PARENT]
    if provider == "gateway":
        content = body["messages"][0]["content"]
        urls = [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        return urls == [f"data:image/png;base64,{PARENT_B64}"]
    if provider == "gemini":
        parts = body["contents"][0]["parts"]
        return [p["inlineData"]["data"] for p in parts if "inlineData" in p] == [PARENT_B64]
    if provider == "automatic1111":
        return body["_path"].endswith("/img2img") and body["init_images"] == [PARENT_B64]
    raise AssertionError(provider)


def by_name(model: ModelSpec) -> str:
    return model.name


def test_every_default_is_offered_once_its_provider_is_configured(providers: dict[str, ImageProvider]) -> None:
    assert list(available_models(DEFAULT_MODELS, providers)) == [m.name for m in DEFAULT_MODELS]


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=by_name)
async def test_a_variation_hands_the_model_its_parent_image(
    model: ModelSpec, fakes: Fakes, providers: dict[str, ImageProvider], runner: ProviderRunner
) -> None:
    # Every provider behind the defaults takes an input image (OpenAI's /images/edits, Gemini's
    # inlineData, the gateway's image_url part, A1111's img2img): a V press must be a real variation.
    assert model.supports_input_image
    assert warnings_for(model, seed_given=False, negative=False, variation=True) == []
    variation = spec(input_image=InputImage(PARENT, "image/png"))

    [image] = await run_one(runner, providers, model, variation)

    if model.provider == "offline":
        [plain] = await run_one(runner, providers, model, spec())
        assert image.data != plain.data  # drawn over its parent
        return
    [body] = fakes.generation_requests(model.provider)
    assert sent_parent(model.provider, body)


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=by_name)
async def test_a_seed_is_claimed_only_where_it_reaches_the_model_and_the_image_says_which(
    model: ModelSpec, fakes: Fakes, providers: dict[str, ImageProvider], runner: ProviderRunner
) -> None:
    [image] = await run_one(runner, providers, model, spec())

    if model.provider == "offline":
        [again] = await run_one(runner, providers, model, spec())
        [other] = await run_one(runner, providers, model, dataclasses.replace(spec(), seed=99))
        assert (image.data == again.data, image.data == other.data) == (True, False)
        assert (image.seed, other.seed) == (1234, 99)
        return
    [body] = fakes.generation_requests(model.provider)
    if model.supports_seed:
        assert sent_seed(model.provider, body) == 1234
        assert image.seed == 1234
    else:
        assert sent_seed(model.provider, body) is None
        # Nothing honoured a seed: the image has none (a caption must not show the job's own).
        assert image.seed is None


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=by_name)
async def test_a_negative_prompt_is_claimed_only_where_it_reaches_the_model(
    model: ModelSpec, fakes: Fakes, providers: dict[str, ImageProvider], runner: ProviderRunner
) -> None:
    [image] = await run_one(runner, providers, model, spec(negative=NEGATIVE))

    if model.provider == "offline":
        [plain] = await run_one(runner, providers, model, spec())
        assert model.supports_negative_prompt and image.data != plain.data
        return
    [body] = fakes.generation_requests(model.provider)
    sent = NEGATIVE in json.dumps({k: v for k, v in body.items() if k != "_files"})
    assert sent == model.supports_negative_prompt
    if not model.supports_negative_prompt:
        assert warnings_for(model, seed_given=False, negative=True, variation=False) != []


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=by_name)
async def test_max_images_per_call_are_made_in_one_call(
    model: ModelSpec, fakes: Fakes, providers: dict[str, ImageProvider], runner: ProviderRunner
) -> None:
    count = model.max_images_per_call

    images = await run_one(runner, providers, model, spec(count=count))

    assert len(images) == count
    if model.provider != "offline":
        [body] = fakes.generation_requests(model.provider)
        assert sent_count(model.provider, body) == count


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=by_name)
async def test_every_claimed_aspect_ratio_comes_back_in_that_shape(
    model: ModelSpec, providers: dict[str, ImageProvider], runner: ProviderRunner
) -> None:
    for ratio in model.aspect_ratios:
        [image] = await run_one(runner, providers, model, spec(aspect_ratio=ratio))

        with Image.open(io.BytesIO(image.data)) as made:
            width, height = made.size
        rw, rh = ratio_parts(ratio)
        assert abs((width / height) / (rw / rh) - 1) < RATIO_TOLERANCE, (ratio, width, height)
