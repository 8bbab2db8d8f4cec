"""Fitting images under Discord's upload limit: re-encoded or scaled down only when needed, packed into
as few messages as the limit allows. CPU-bound, no I/O: callers run fit_images in a thread."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import discord
from PIL import Image

from bot.adapters.discord.uploads import ImageUpload
from bot.core.models import ImageFile
from bot.core.storage.base import EXTENSIONS

log = logging.getLogger(__name__)

MAX_FILES_PER_MESSAGE = 10
# Re-encodings tried, best first, when an image is over the limit; then the image is scaled down.
_ENCODINGS: tuple[tuple[str, int], ...] = (("WEBP", 90), ("WEBP", 75), ("JPEG", 85), ("JPEG", 70))
_MIN_SIDE = 64


@dataclass(frozen=True)
class Upload:
    """One image ready to attach: maybe re-encoded to fit."""

    index: int  # the image's number in its generation (0-based)
    filename: str
    data: bytes
    reencoded: bool

    def file(self) -> discord.File:
        # A fresh File each time: discord.py consumes the stream when it sends.
        return discord.File(ImageUpload(self.data), filename=self.filename)


@dataclass(frozen=True)
class FittedImages:
    messages: list[list[Upload]]  # one list of uploads per message, each within the limit
    too_big: list[int]  # image indexes that could not be made small enough (reported, never dropped silently)

    @property
    def reencoded(self) -> bool:
        return any(u.reencoded for group in self.messages for u in group)

    def notes(self) -> list[str]:
        notes = []
        if self.reencoded:
            notes.append("Some images were re-encoded to fit Discord's upload limit.")
        if self.too_big:
            numbers = ", ".join(str(i + 1) for i in self.too_big)
            notes.append(f"Image {numbers} was too large to upload here; it is kept in your /history.")
        return notes


def fit_images(images: Sequence[ImageFile], limit: int, prefix: str = "image") -> FittedImages:
    """Each image at most `limit` bytes (re-encoded to WebP/JPEG, then scaled down, only if needed),
    packed into as few messages as fit `limit` bytes and 10 files each. CPU-bound: run it in a thread."""
    uploads: list[Upload] = []
    too_big: list[int] = []
    for image in sorted(images, key=lambda i: i.record.index):
        upload = _fit_one(image, limit, prefix)
        if upload is None:
            too_big.append(image.record.index)
        else:
            uploads.append(upload)
    messages: list[list[Upload]] = []
    current: list[Upload] = []
    size = 0
    for upload in uploads:
        if current and (size + len(upload.data) > limit or len(current) >= MAX_FILES_PER_MESSAGE):
            messages.append(current)
            current, size = [], 0
        current.append(upload)
        size += len(upload.data)
    if current:
        messages.append(current)
    return FittedImages(messages, too_big)


def _fit_one(image: ImageFile, limit: int, prefix: str) -> Upload | None:
    index = image.record.index
    if len(image.data) <= limit:
        extension = EXTENSIONS.get(image.record.mime_type, "png")
        return Upload(index, f"{prefix}-{index + 1}.{extension}", image.data, False)
    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError):
        log.warning("image %s is over the upload limit and can't be decoded to shrink it", image.record.id)
        return None
    while True:
        for fmt, quality in _ENCODINGS:
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, quality=quality)
            if buffer.tell() <= limit:
                extension = "webp" if fmt == "WEBP" else "jpg"
                return Upload(index, f"{prefix}-{index + 1}.{extension}", buffer.getvalue(), True)
        width, height = picture.size
        if min(width, height) * 3 // 4 < _MIN_SIDE:
            return None
        picture = picture.resize((width * 3 // 4, height * 3 // 4), Image.Resampling.LANCZOS)
