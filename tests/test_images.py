"""Reading images of every kind and mapping maps back to the original frame."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seediff_core.images import PAD_RGB, ImageError, load_image, prepare_image, to_original, working_shape


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (31, 17), 128),
        lambda: Image.new("1", (31, 17), 1),
        lambda: Image.new("CMYK", (31, 17), (0, 255, 0, 0)),
        lambda: Image.new("RGBA", (31, 17), (255, 0, 0, 0)),
        lambda: Image.new("LA", (31, 17), (200, 255)),
        lambda: Image.new("P", (31, 17), 3),
        lambda: Image.new("I;16", (31, 17), 40000),
        lambda: Image.new("I", (31, 17), 70000),
        lambda: Image.new("F", (31, 17), 0.25),
    ],
    ids=["L", "1", "CMYK", "RGBA", "LA", "P", "I;16", "I", "F"],
)
def test_every_mode_becomes_rgb_of_the_same_size(make):
    image = load_image(make())
    assert image.mode == "RGB" and image.size == (31, 17)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = load_image(_encode(Image.fromarray(arr)))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_composited_onto_the_pad_colour():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 255, 0, 255))
    out = np.asarray(load_image(_encode(rgba)))
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[3, 3]) == PAD_RGB
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert tuple(np.asarray(load_image(palette))[1, 1]) == PAD_RGB


def test_exif_orientation_is_applied():
    raw = Image.new("RGB", (40, 20), (0, 0, 0))
    raw.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    image = load_image(_encode(raw, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)
    arr = np.asarray(image).astype(int)
    assert arr[2, 10, 0] > 200 and arr[-3, 10, 0] < 60  # the red strip is now on top


def test_unreadable_and_oversized_images_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(b"definitely not an image")
    truncated = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60]
    with pytest.raises(ImageError):
        load_image(truncated)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(_encode(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_working_shape_keeps_aspect_and_pads_to_the_multiple():
    assert working_shape(333, 517, 512, 64) == (512, 384, 512, 330)
    assert working_shape(517, 333, 512, 64) == (384, 512, 330, 512)
    assert working_shape(512, 512, 512, 64) == (512, 512, 512, 512)
    assert working_shape(4000, 30, 128, 64) == (64, 128, 1, 128)


def test_prepare_pads_after_the_content():
    image = Image.new("RGB", (333, 517), (250, 10, 10))
    prepared = prepare_image(image, 512, 64)
    assert prepared.size == (512, 384) and prepared.content == (0, 0, 330, 512)
    assert prepared.pixels.shape == (1, 3, 512, 384)
    assert tuple(prepared.rgb[10, 100]) == (250, 10, 10)
    assert tuple(prepared.rgb[10, 380]) == PAD_RGB
    assert float(prepared.pixels.min()) >= -1 and float(prepared.pixels.max()) <= 1
    assert prepared.digest == prepare_image(image, 512, 64).digest


def test_maps_come_back_to_the_original_frame():
    image = Image.new("RGB", (333, 517))
    prepared = prepare_image(image, 512, 64)
    grid = torch.zeros(1, 64, 48)  # a latent-sized map (8x smaller than the working grid)
    grid[0, :, : 330 // 16] = 1.0  # left half of the content (content is 41.25 cells wide)
    back = to_original(grid, prepared)
    assert back.shape == (1, 517, 333)
    left = (back[0] > 0.5).float().mean(dim=0)
    assert left[:150].min() == 1 and left[185:].max() == 0
