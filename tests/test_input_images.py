"""Pictures users bring: each bad one refused in plain words, good ones upright, 8-bit and bare."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from bot.core.catalogue import DEFAULT_MODELS, ModelSpec
from bot.core.errors import InvalidRequest
from bot.core.input_images import (
    MAX_INPUT_BYTES,
    MAX_SIDE,
    UploadedImage,
    check,
    refuse_if_too_large,
    refuse_unless_model_takes,
)


def encoded(image: Image.Image, format: str = "PNG", **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **params)
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims huge dimensions: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def refusal(data: bytes) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check(UploadedImage(data, "photo.bin"))
    return caught.value.user_message


def test_an_empty_file_is_refused() -> None:
    assert "empty" in refusal(b"")


def test_a_file_that_is_not_a_picture_is_refused() -> None:
    assert "isn't a picture" in refusal(b"%PDF-1.7 not an image at all")


def test_a_damaged_picture_is_refused() -> None:
    whole = encoded(Image.new("RGB", (200, 200), (10, 200, 30)), "JPEG")
    assert "damaged" in refusal(whole[: len(whole) // 3])


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    assert "too big" in refusal(png_declaring(100_000, 100_000))
    assert "too big" in refusal(png_declaring(8_000, 8_000))


def test_an_animated_picture_is_refused() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert "animated" in refusal(data)


def test_a_file_over_the_size_limit_is_refused_unread() -> None:
    assert "too large" in refusal(b"\xff" * (MAX_INPUT_BYTES + 1))
    with pytest.raises(InvalidRequest, match=r"limit is 20\.0 MB"):
        refuse_if_too_large(MAX_INPUT_BYTES + 1)


def test_cmyk_becomes_rgb() -> None:
    checked = check(UploadedImage(encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")))
    with Image.open(io.BytesIO(checked.data)) as image:
        assert image.mode == "RGB" and image.size == (30, 20)
        red, green, blue = image.getpixel((5, 5))
        assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_greyscale_becomes_eight_bit() -> None:
    deep = Image.new("I;16", (10, 10), 0xFF00)
    checked = check(UploadedImage(encoded(deep)))
    with Image.open(io.BytesIO(checked.data)) as image:
        assert image.mode == "RGB"
        assert image.getpixel((1, 1))[0] >= 250


def test_transparency_is_kept_as_png() -> None:
    checked = check(UploadedImage(encoded(Image.new("RGBA", (10, 10), (1, 2, 3, 0)))))
    assert checked.mime_type == "image/png" and checked.storage_key.endswith(".png")
    assert checked.storage_key.startswith("inputs/") and checked.sha256 in checked.storage_key


def test_exif_orientation_is_applied_and_all_metadata_dropped() -> None:
    # A phone photo stored sideways (orientation 6: rotate 90° clockwise to view), with a location.
    photo = Image.new("RGB", (40, 20), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left of the stored picture = the top when upright
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {2: (48.0, 51.0, 29.0), 4: (2.0, 17.0, 40.0)}  # GPS
    data = encoded(photo, "JPEG", exif=exif.tobytes(), icc_profile=b"fake-icc" * 4, quality=95)
    checked = check(UploadedImage(data, "IMG_0001.JPG"))
    assert (checked.width, checked.height) == (20, 40)
    with Image.open(io.BytesIO(checked.data)) as image:
        assert image.size == (20, 40)
        assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info
        red, _, blue = image.getpixel((10, 2))
        assert red > 200 and blue < 60
    assert b"Exif" not in checked.data


def test_a_large_photo_is_brought_down_to_the_longest_side() -> None:
    checked = check(UploadedImage(encoded(Image.new("RGB", (MAX_SIDE * 2, MAX_SIDE), (5, 5, 5)), "JPEG")))
    assert (checked.width, checked.height) == (MAX_SIDE, MAX_SIDE // 2)


def test_a_model_without_picture_input_names_those_with_it() -> None:
    plain = ModelSpec(name="words-only", provider="x", provider_model="y")
    with pytest.raises(InvalidRequest) as caught:
        refuse_unless_model_takes(plain, 1, [plain, *DEFAULT_MODELS])
    message = caught.value.user_message
    assert message.startswith("words-only can't start from a picture.")
    assert "gpt-image-2" in message and "sd" in message


def test_more_pictures_than_the_model_takes_are_refused() -> None:
    sd = next(m for m in DEFAULT_MODELS if m.name == "sd")
    with pytest.raises(InvalidRequest, match=r"sd takes at most 1 picture; you sent 2\. For 2, try"):
        refuse_unless_model_takes(sd, 2, DEFAULT_MODELS)
    refuse_unless_model_takes(sd, 1, DEFAULT_MODELS)
