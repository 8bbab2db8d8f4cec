"""The model catalogue: what a model entry says, the default entries, which configured models are
usable here, and the default model."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, field_validator

if TYPE_CHECKING:  # the providers import ModelSpec from here
    from bot.core.providers.base import ImageProvider

log = logging.getLogger(__name__)

OFFLINE_MODEL = "offline"

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")


class ModelSpec(BaseModel):
    """One entry of the model catalogue: a friendly name users pick, mapped to a provider's model."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
    provider: str
    provider_model: str
    label: str = ""
    cost: int = Field(default=1, ge=0)
    max_images_per_call: int = Field(default=1, ge=1, le=10)
    supports_seed: bool = False
    supports_negative_prompt: bool = False
    supports_input_image: bool = False
    # Pictures one request may start from (edits), when supports_input_image.
    max_input_images: int = Field(default=1, ge=1, le=16)
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
    # Provider-specific extras (quality, output format, steps...), passed through untouched.
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("aspect_ratios")
    @classmethod
    def _known_ratios(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in value if r not in ASPECT_RATIOS]
        if unknown:
            raise ValueError(f"unknown aspect ratios {unknown}; allowed: {', '.join(ASPECT_RATIOS)}")
        return value


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="offline",
        provider="offline",
        provider_model="offline-demo",
        label="Offline demo (not AI)",
        cost=1,
        max_images_per_call=4,
        supports_seed=True,
        supports_negative_prompt=True,
        supports_input_image=True,
        max_input_images=3,  # drawn side by side
    ),
    ModelSpec(
        name="gpt-image-2",
        provider="openai",
        provider_model="gpt-image-2",
        label="OpenAI GPT Image 2",
        cost=4,
        max_images_per_call=4,
        # Variations go to /images/edits with the parent image. No seed, no negative prompt in the API;
        # any size within 1:3..3:1, so every ratio.
        supports_input_image=True,
        max_input_images=16,  # /images/edits takes up to 16 image[] parts for the GPT image models
        # Single-image calls stream two partial images as live previews (multi-image calls can't:
        # OpenAI's partial-image events don't say which image they belong to).
        options={"quality": "medium", "output_format": "png", "partial_images": 2},
    ),
    ModelSpec(
        name="gpt-image-1-mini",
        provider="openai",
        provider_model="gpt-image-1-mini",
        label="OpenAI GPT Image 1 mini",
        cost=2,
        max_images_per_call=4,
        supports_input_image=True,
        max_input_images=16,
        # Three fixed sizes only (1024x1024, 1536x1024, 1024x1536): other ratios would come back as these.
        aspect_ratios=("1:1", "3:2", "2:3"),
        options={"quality": "medium", "output_format": "png"},
    ),
    ModelSpec(
        # Gemini 2.5 Flash Image ("Nano Banana"): the GA id, the same on OpenRouter and Vercel's gateway.
        name="gemini-flash-image-gw",
        provider="gateway",
        provider_model="google/gemini-2.5-flash-image",
        label="Gemini 2.5 Flash Image (gateway)",
        cost=3,
        # Gemini's image models refuse more than one candidate; a seed isn't documented to steer the image.
        max_images_per_call=1,
        supports_input_image=True,
        # Google documents Gemini 2.5 Flash Image as working best with up to 3 input images.
        max_input_images=3,
    ),
    ModelSpec(
        name="gemini-flash-image",
        provider="gemini",
        provider_model="gemini-2.5-flash-image",
        label="Gemini 2.5 Flash Image",
        cost=3,
        # "Multiple candidates is not enabled" for the image models: one image per call.
        max_images_per_call=1,
        supports_input_image=True,
        # Google documents Gemini 2.5 Flash Image as working best with up to 3 input images.
        max_input_images=3,
    ),
    ModelSpec(
        # "default" means whichever checkpoint the server has loaded; name a checkpoint to switch.
        name="sd",
        provider="automatic1111",
        provider_model="default",
        label="Stable Diffusion (self-hosted)",
        cost=1,
        max_images_per_call=4,
        supports_seed=True,
        supports_negative_prompt=True,
        supports_input_image=True,
        max_input_images=1,  # img2img starts from one init image
        options={"steps": 30, "cfg_scale": 7},
    ),
)


def available_models(models: Iterable[ModelSpec], providers: Mapping[str, ImageProvider]) -> dict[str, ModelSpec]:
    """Models whose provider exists and has credentials. The rest are hidden, not offered and then failing."""
    usable: dict[str, ModelSpec] = {}
    for model in models:
        provider = providers.get(model.provider)
        if provider is None:
            log.warning("model %s names an unknown provider %r; hidden", model.name, model.provider)
        elif provider.available():
            usable[model.name] = model
        else:
            log.info("model %s hidden: provider %s has no credentials", model.name, model.provider)
    return usable


def choose_default(usable: Mapping[str, ModelSpec], configured: str | None) -> str:
    """The configured default if usable, else the first real model, else the offline demo."""
    if configured and configured in usable:
        return configured
    if configured:
        log.warning("DEFAULT_MODEL %s is not usable here; choosing another", configured)
    for name in usable:
        if name != OFFLINE_MODEL:
            return name
    if not usable:
        raise RuntimeError("no usable model: add the offline model or configure a provider key")
    return next(iter(usable))
