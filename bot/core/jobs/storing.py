"""Jobs' images in the image store: kept, read back, discarded. The one holder of the store for jobs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from bot.core.aio import all_of
from bot.core.errors import ProviderError, ProviderUnavailable
from bot.core.models import ImageFile, ImageRecord
from bot.core.storage.base import ImageStore, StorageError

log = logging.getLogger(__name__)

STORAGE_FAILED_MESSAGE = "The images were made but could not be saved."


class StoredImages:
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    async def keep(self, file: ImageFile) -> ProviderError | None:
        """Store one image; what went wrong, as the user is told it, if it could not be kept."""
        record = file.record
        try:
            await self.store.put(record.storage_key, file.data, record.mime_type)
        except StorageError as error:
            log.warning("job %s: storing image %d failed: %s", record.generation_id, record.index, error)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        except Exception:
            # Not the store's contract, but the image may be on screen already: crashing the job here would
            # run it again and show it twice. Refunded like any image that could not be kept.
            log.exception("job %s: storing image %d failed unexpectedly", record.generation_id, record.index)
            return ProviderUnavailable(STORAGE_FAILED_MESSAGE)
        return None

    async def discard(self, records: Sequence[ImageRecord]) -> None:
        """Best effort: an orphaned file costs only space."""
        for record in records:
            with contextlib.suppress(StorageError, OSError):
                await self.store.delete(record.storage_key)

    async def load(self, records: Sequence[ImageRecord]) -> list[ImageFile]:
        """The files of these images, read at the same time. Raises StorageError."""
        contents = await all_of(*(self.store.get(r.storage_key) for r in records))
        return [ImageFile(r, data) for r, data in zip(records, contents, strict=True)]
