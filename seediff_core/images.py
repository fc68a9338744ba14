"""From a file (or bytes, or PIL image) to the model's working grid, and masks back to the original.

Frames: ``original`` is the EXIF-corrected image as a viewer shows it, (W, H) in PIL order;
``working`` is the padded grid the model sees; ``content`` is the part of the working grid that
holds the image (the rest is padding). Every mask returned to a user is in the original frame.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# Padding colour: the mean colour of ImageNet/LAION-like photos, so padding reads as neutral.
PAD_RGB = (124, 116, 104)


class ImageError(ValueError):
    """The image could not be read or converted; the message names the image and the reason."""


@dataclass(frozen=True)
class PreparedImage:
    """An image on the model's working grid.

    Attributes:
        pixels (`torch.Tensor`): (1, 3, H, W) float32 in [-1, 1], H and W multiples of the model's multiple.
        rgb (`np.ndarray`): (H, W, 3) uint8, the same working grid (used by PAMR and overlays).
        original_size (`tuple[int, int]`): (width, height) of the EXIF-corrected original.
        content (`tuple[int, int, int, int]`): (x, y, width, height) of the image inside the grid.
        digest (`str`): sha256 of the working pixels, the key of the latent cache.
    """

    pixels: torch.Tensor
    rgb: np.ndarray
    original_size: tuple[int, int]
    content: tuple[int, int, int, int]
    digest: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the working grid."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """Read an image and return it as RGB with EXIF orientation applied.

    Palette, grayscale, CMYK, 16-bit and float images become 8-bit RGB; transparency is composited
    onto ``PAD_RGB``. ``max_pixels`` caps width x height (decompression bombs) before decoding.

    Raises:
        ImageError: unreadable, truncated, too large, or an unsupported mode.
    """
    name = source if isinstance(source, (str, Path)) else type(source).__name__
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            image = Image.open(io.BytesIO(data))
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageError(f"{name}: {image.width}x{image.height} exceeds the limit of {max_pixels} pixels")
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: no such file") from exc
    except Image.DecompressionBombError as exc:  # PIL's own guard fired before ours could read the size
        raise ImageError(f"{name}: the image exceeds the limit of {max_pixels or Image.MAX_IMAGE_PIXELS} pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot read image ({exc})") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; alpha is composited onto ``PAD_RGB``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if image.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr, top = (arr - lo), max(hi - lo, 1e-12)
        image = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, PAD_RGB)
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return image


def working_shape(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int, int, int]:
    """(grid_h, grid_w, content_h, content_w): the long side becomes ``long_side`` (rounded to
    ``multiple``), the short side keeps the aspect ratio and is padded up to ``multiple``."""
    long_side = max(multiple, int(round(long_side / multiple)) * multiple)
    scale = long_side / max(width, height)
    content_w = max(1, min(long_side, int(round(width * scale))))
    content_h = max(1, min(long_side, int(round(height * scale))))
    grid_w = math.ceil(content_w / multiple) * multiple
    grid_h = math.ceil(content_h / multiple) * multiple
    return grid_h, grid_w, content_h, content_w


def prepare_image(image: Image.Image, long_side: int, multiple: int) -> PreparedImage:
    """Resize ``image`` (RGB) onto the working grid, content at the top-left, padding after it."""
    width, height = image.size
    grid_h, grid_w, content_h, content_w = working_shape(width, height, long_side, multiple)
    resized = image.resize((content_w, content_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = np.empty((grid_h, grid_w, 3), dtype=np.uint8)
    canvas[:] = PAD_RGB
    canvas[:content_h, :content_w] = np.asarray(resized)
    pixels = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    digest = hashlib.sha256(canvas.tobytes() + repr(canvas.shape).encode()).hexdigest()
    return PreparedImage(pixels, canvas, (width, height), (0, 0, content_w, content_h), digest)


def to_original(maps: torch.Tensor, prepared: PreparedImage) -> torch.Tensor:
    """Map soft maps from any grid aligned with the working grid back to the original frame.

    Args:
        maps (`torch.Tensor`): (K, h, w) float; (h, w) proportional to the working grid.
        prepared (`PreparedImage`): the image they were computed on.

    Returns:
        (K, H, W) float32 with (W, H) = ``prepared.original_size``.
    """
    grid_h, grid_w = prepared.size
    x, y, cw, ch = prepared.content
    maps = maps.float()
    if maps.shape[-2:] != (grid_h, grid_w):
        maps = F.interpolate(maps[None], size=(grid_h, grid_w), mode="bilinear", align_corners=False)[0]
    maps = maps[:, y : y + ch, x : x + cw]
    width, height = prepared.original_size
    if (ch, cw) != (height, width):
        maps = F.interpolate(maps[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return maps
