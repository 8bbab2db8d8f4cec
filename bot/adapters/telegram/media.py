"""Making an image acceptable as a Telegram photo. Photos must be ≤ 10 MB, width + height ≤ 10000 and
the side ratio ≤ 20; anything else is re-encoded (the untouched original stays available as a document).
Pillow work holds the CPU, so callers run these functions in a thread."""

from __future__ import annotations

import io

from PIL import Image

PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDE_SUM = 10_000
PHOTO_MAX_RATIO = 20
DOCUMENT_MAX_BYTES = 50 * 1024 * 1024

# Each retry after Telegram refused a photo as too big shrinks it further: (scale, JPEG quality).
_SHRINK_STEPS = ((1.0, 90), (0.75, 85), (0.5, 80), (0.35, 75))


def fits_photo(data: bytes) -> bool:
    if len(data) > PHOTO_MAX_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError):
        return True  # not ours to judge: let Telegram say
    return _dimensions_ok(width, height)


def _dimensions_ok(width: int, height: int) -> bool:
    return width + height <= PHOTO_MAX_SIDE_SUM and max(width, height) <= PHOTO_MAX_RATIO * max(1, min(width, height))


def shrink_for_photo(data: bytes, step: int = 0) -> bytes:
    """A JPEG within the photo limits, smaller at each step (0, 1, 2…)."""
    scale, quality = _SHRINK_STEPS[min(step, len(_SHRINK_STEPS) - 1)]
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        # Bring the side sum within the limit first, then apply the step's scale.
        limit_scale = min(1.0, PHOTO_MAX_SIDE_SUM / max(1, width + height))
        factor = min(limit_scale, scale) if step else limit_scale
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        converted = image.convert("RGB")
        if size != converted.size:
            converted = converted.resize(size, Image.Resampling.LANCZOS)
        # An extreme side ratio can't be fixed by scaling: pad the short side.
        w, h = converted.size
        if not _dimensions_ok(w, h):
            short = max(w, h) // PHOTO_MAX_RATIO + 1
            canvas = Image.new("RGB", (max(w, short), max(h, short)), (0, 0, 0))
            canvas.paste(converted, ((canvas.width - w) // 2, (canvas.height - h) // 2))
            converted = canvas
        out = io.BytesIO()
        converted.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def prepare_photo(data: bytes) -> bytes:
    """The image as it can be sent as a photo: unchanged when it already fits."""
    return data if fits_photo(data) else shrink_for_photo(data)
