"""Running a job on its provider: the images it made, each with the record it will be stored under and
its bytes, ready to store and show, and the first error of the images it did not make."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from PIL import Image

from bot.core import generations
from bot.core.aio import all_of
from bot.core.catalogue import ModelSpec
from bot.core.errors import ProviderError, ProviderUnavailable
from bot.core.ids import new_id
from bot.core.jobs.storing import STORAGE_FAILED_MESSAGE, StoredImages
from bot.core.models import Generation, GenerationKind, ImageFile, ImageRecord
from bot.core.providers.base import GeneratedImage, ImageProvider, InputImage, PreviewCallback
from bot.core.providers.runner import GenerationSpec, ProviderRunner
from bot.core.safety import safety_identifier
from bot.core.storage.base import StorageError, new_key

log = logging.getLogger(__name__)

DEADLINE_MESSAGE = "The image service took too long."
INPUTS_UNAVAILABLE_MESSAGE = "The picture to start from could not be read back."

@dataclass(frozen=True)
class Made:
    """What a provider made for a job: the files ready to store, and why the others are missing."""

    files: list[ImageFile]
    error: ProviderError | None


class JobRunner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        images: StoredImages,
        providers: Mapping[str, ImageProvider],
        models: Mapping[str, ModelSpec],
        runner: ProviderRunner,
        deadline_seconds: float,
    ) -> None:
        self.pool = pool
        self.images = images
        self.providers = providers
        self.models = models
        self.runner = runner
        self.deadline_seconds = deadline_seconds

    async def make(self, generation: Generation, preview: PreviewCallback) -> Made:
        model = self.models.get(generation.model)
        provider = self.providers.get(model.provider) if model else None
        if model is None or provider is None or not provider.available():
            return Made([], ProviderUnavailable(f"The model {generation.model} is no longer available."))
        try:
            inputs = await self._input_images(generation, model)
        except ProviderError as error:
            return Made([], error)
        try:
            async with asyncio.timeout(self.deadline_seconds):
                spec = GenerationSpec(
                    prompt=generation.prompt,
                    negative_prompt=generation.negative_prompt,
                    count=generation.count,
                    aspect_ratio=generation.aspect_ratio,
                    seed=generation.seed,
                    input_images=inputs,
                    safety_identifier=safety_identifier(generation.owner),
                )
                outcomes = await self.runner.run(provider, model, spec, preview)
        except TimeoutError:
            return Made([], ProviderUnavailable(DEADLINE_MESSAGE))
        prepared = [await self._prepare(generation, o.index, o.image) if o.image else o.error for o in outcomes]
        files = [p for p in prepared if isinstance(p, ImageFile)]
        return Made(files, next((p for p in prepared if isinstance(p, ProviderError)), None))

    async def _input_images(self, generation: Generation, model: ModelSpec) -> tuple[InputImage, ...]:
        """What the job starts from: the parent image (a variation, a remix), then the pictures the user
        brought (an edit). Everything is read from Postgres and the store, so it survives a restart."""
        async with self.pool.acquire() as conn:
            parent = await generations.get_image(conn, generation.parent_image_id) if generation.parent_image_id \
                else None
            brought = (await generations.get_inputs(conn, [generation.id]))[generation.id]
        needed = bool(brought) or generation.kind == GenerationKind.REMIX
        if needed and not model.supports_input_image:
            raise ProviderUnavailable(f"The model {model.name} can no longer start from a picture.")
        if not model.supports_input_image:
            return ()
        images: list[InputImage] = []
        if parent is not None:
            try:
                images.append(InputImage(await self.images.store.get(parent.storage_key), parent.mime_type))
            except StorageError as error:
                if needed:
                    log.warning("job %s: the image to remix is unavailable: %s", generation.id, error)
                    raise ProviderUnavailable(INPUTS_UNAVAILABLE_MESSAGE) from error
                log.warning("job %s: parent image unavailable, varying by seed only: %s", generation.id, error)
        try:
            contents = await all_of(*(self.images.store.get(i.storage_key) for i in brought))
        except StorageError as error:
            log.warning("job %s: an input picture is unavailable: %s", generation.id, error)
            raise ProviderUnavailable(INPUTS_UNAVAILABLE_MESSAGE) from error
        images.extend(InputImage(data, i.mime_type) for i, data in zip(brought, contents, strict=True))
        return tuple(images)

    async def _prepare(self, generation: Generation, index: int, image: GeneratedImage) -> ImageFile | ProviderError:
        """The record an image will be stored under, with its bytes (or why it cannot be stored)."""
        width, height = image.width, image.height
        if not width or not height:
            width, height = _measure(image.data)
        key = new_key(image.mime_type)
        try:
            url = await self.images.store.url(key)
        except StorageError as error:
            log.warning("job %s: no address for image %d: %s", generation.id, index, error)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        record = ImageRecord(
            id=new_id(),
            generation_id=generation.id,
            index=index,
            storage_key=key,
            url=url,
            mime_type=image.mime_type,
            width=width,
            height=height,
            bytes=len(image.data),
            seed=image.seed,
            file_refs={},
        )
        return ImageFile(record, image.data)


def _measure(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size
