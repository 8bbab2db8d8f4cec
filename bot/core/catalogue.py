"""The model catalogue: configured models whose provider is usable here, and the default."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from bot.config import ModelSpec
from bot.core.providers.base import ImageProvider

log = logging.getLogger(__name__)

OFFLINE_MODEL = "offline"


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
