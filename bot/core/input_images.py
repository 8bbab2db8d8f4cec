"""Pictures users bring: checked, normalised and stripped of metadata before anything keeps or sends them.

Every check runs on bytes already in memory, in a worker thread (decoding a large photo holds the CPU far
longer than an event loop may stall). A refusal is an InvalidRequest in plain words, raised before anything
is stored or charged."""

from __future__ import annotations

import asyncio
import hashlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.core.catalogue import ModelSpec
from bot.core.errors import InvalidRequest

MAX_INPUT_BYTES = 20 * 1024 * 1024  # the public Telegram Bot API's download limit, also used for Discord
# Declared pixels beyond this are refused before decoding (a decompression bomb declares billions).
MAX_INPUT_PIXELS = 50_000_000
# Pillow raises DecompressionBombError past twice its limit: ours is checked first, this is the backstop.
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
# Providers work at far less than a phone camera makes (OpenAI's and Gemini's edits, SD's img2img all
# scale inputs down to about this); the longest side is brought down to it, which keeps decoding cheap.
MAX_SIDE = 1536
# A JPEG is decoded at the smallest scale (1/2, 1/4, 1/8: nearly free) whose longest side still has this;
# the full decode and the resize of a phone photo would cost several times more.
DRAFT_SIDE = 1000
INPUT_PREFIX = "inputs/"
JPEG_QUALITY = 90

TOO_LARGE_MESSAGE = "That file is too large ({size}); the limit is {limit}."


@dataclass(frozen=True)
class UploadedImage:
    """A file as a user sent it: nothing about it is trusted."""

    data: bytes
    filename: str = ""
    mime_type: str = ""


@dataclass(frozen=True)
class CheckedImage:
    """An uploaded picture after the checks: 8-bit RGB or RGBA, upright, no metadata, at most MAX_SIDE."""

    data: bytes
    mime_type: str  # image/jpeg without transparency, image/png with it
    width: int
    height: int
    sha256: str

    @property
    def storage_key(self) -> str:
        """Content-addressed: the same picture sent twice is stored once."""
        return f"{INPUT_PREFIX}{self.sha256}.{'png' if self.mime_type == 'image/png' else 'jpg'}"


def megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def refuse_if_too_large(size: int, limit: int = MAX_INPUT_BYTES) -> None:
    """Refuse a file over the limit; front ends call it with the size the platform reports, before downloading."""
    if size > limit:
        raise InvalidRequest(TOO_LARGE_MESSAGE.format(size=megabytes(size), limit=megabytes(limit)))


def models_taking_images(models: Sequence[ModelSpec]) -> list[str]:
    return [m.name for m in models if m.supports_input_image]


def refuse_unless_model_takes(model: ModelSpec, count: int, all_models: Sequence[ModelSpec]) -> None:
    """A model that can't start from a picture, or from this many, is named with those that can."""
    if count == 0:
        return
    if not model.supports_input_image:
        able = models_taking_images(all_models)
        others = f" Models that can: {', '.join(able)}." if able else " No model here can."
        raise InvalidRequest(f"{model.name} can't start from a picture.{others}")
    if count > model.max_input_images:
        more = [m.name for m in all_models if m.supports_input_image and m.max_input_images >= count]
        hint = f" For {count}, try {', '.join(more)}." if more else ""
        pictures = "picture" if model.max_input_images == 1 else "pictures"
        raise InvalidRequest(f"{model.name} takes at most {model.max_input_images} {pictures}; you sent {count}.{hint}")


async def check_all(uploads: Sequence[UploadedImage]) -> list[CheckedImage]:
    """Each upload checked and normalised off the event loop, in order; the first bad one refuses them all."""
    return [await asyncio.to_thread(check, upload) for upload in uploads]


def check(upload: UploadedImage) -> CheckedImage:
    """Refuse what isn't a still, readable, reasonably sized picture; return it upright, 8-bit, bare."""
    name = f" ({upload.filename})" if upload.filename else ""
    if not upload.data:
        raise InvalidRequest(f"That file{name} is empty.")
    refuse_if_too_large(len(upload.data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(upload.data))
            with image:
                width, height = image.size
                if width * height > MAX_INPUT_PIXELS:
                    raise InvalidRequest(
                        f"That picture{name} is too big ({width}×{height} pixels); "
                        f"the limit is {MAX_INPUT_PIXELS // 1_000_000} megapixels."
                    )
                if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
                    raise InvalidRequest(f"That picture{name} is animated. Send a still image.")
                if image.format == "JPEG" and max(width, height) > MAX_SIDE:
                    scale = DRAFT_SIDE / max(width, height)
                    image.draft("RGB", (round(width * scale), round(height * scale)))
                image.load()
                return _normalised(image)
    except InvalidRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidRequest(f"That picture{name} is too big to open safely.") from None
    except UnidentifiedImageError:
        raise InvalidRequest(f"That file{name} isn't a picture I can read. Send a PNG, JPEG or WebP image.") from None
    except (OSError, ValueError, SyntaxError):
        # Truncated or corrupt data that Pillow recognised but could not decode.
        raise InvalidRequest(f"That picture{name} seems damaged; I couldn't read it.") from None


def _normalised(image: Image.Image) -> CheckedImage:
    # Phones store the picture sideways and say so in EXIF: turn it before the EXIF is dropped.
    upright = ImageOps.exif_transpose(image)
    rgb = _eight_bit(upright)
    if max(rgb.size) > MAX_SIDE:
        rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
    bare = rgb  # always a new image: _eight_bit converts
    # Nothing of the file but its pixels is written: no EXIF (location!), no ICC profile, no text chunks.
    bare.info = {}
    out = io.BytesIO()
    if bare.mode == "RGBA":
        bare.save(out, format="PNG", compress_level=1)
        mime = "image/png"
    else:
        bare.save(out, format="JPEG", quality=JPEG_QUALITY)
        mime = "image/jpeg"
    data = out.getvalue()
    return CheckedImage(data, mime, bare.width, bare.height, hashlib.sha256(data).hexdigest())


def _eight_bit(image: Image.Image) -> Image.Image:
    """CMYK, 16-bit, palette and greyscale pictures are converted (not refused): 8-bit RGB, or RGBA when
    the picture has transparency."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: the top byte of each sample.
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L").convert("RGB")
    if mode == "F":
        return image.convert("L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")
