"""Decoding image files of any common kind into 8-bit RGB or L, and resizing them to square uint8
arrays (numpy: reading data needs no torch; training views the same memory as tensors)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Larger images (or decompression bombs) are skipped unread: one would take hundreds of MB.
MAX_PIXELS = 90_000_000
# The size check is ours, from the header; PIL's own warning above ~89 megapixels would repeat it.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

# Modes holding more than 8 bits per pixel; PIL's own convert("L") clips them instead of scaling.
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def printable_path(path: str | Path) -> str:
    """The path as text that prints and saves as UTF-8: the bytes of a file name that are not
    UTF-8 (which Python keeps as lone surrogates) are shown as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class BadImageError(Exception):
    """A file that cannot be decoded as an image; callers skip it and record `reason`."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = printable_path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[BadImageError], tuple[str, str]]:
        # Sent back from decoding worker processes: rebuilt from both fields, not the message.
        return BadImageError, (self.path, self.reason)


def load_image(
    path: str | Path, grayscale: bool = False, *, min_size: int | None = None
) -> Image.Image:
    """Decode fully (so truncation is caught), upright (EXIF), as RGB or L whatever the source mode.

    Images of more than MAX_PIXELS are refused from their header, before any decoding.
    `min_size` lets JPEG decoding skip detail finer than needed for a later resize to that size.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise BadImageError(
                    path,
                    f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is more than "
                    f"the {MAX_PIXELS / 1e6:.0f} megapixels edgecls decodes",
                )
            if min_size is not None:
                img.draft("L" if grayscale else "RGB", (min_size, min_size))
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, _reason(exc)) from None
    return to_8bit(img, grayscale)


def _reason(exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image"
    return str(exc).split("\n")[0] or type(exc).__name__


def to_8bit(img: Image.Image, grayscale: bool) -> Image.Image:
    if img.mode in _WIDE_MODES:
        # 16-bit samples: keep the top byte so the full range maps onto 0..255.
        img = Image.fromarray((np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8))
    if img.mode == "P" or img.mode.endswith(("A", "a")):
        img = img.convert("RGBA")
        # Composite on black so fully transparent pixels do not show hidden colours.
        img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img)
    return img.convert("L" if grayscale else "RGB")


def to_pixels(image: Image.Image, input_size: int) -> np.ndarray:
    """uint8 (C, S, S): shorter side resized to `input_size` (bilinear, antialiased when it
    shrinks), then a centred square crop."""
    width, height = image.size
    if (width, height) != (input_size, input_size):
        short, long = sorted((width, height))
        side = int(input_size * long / short)
        size = (input_size, side) if width <= height else (side, input_size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        left = int(round((size[0] - input_size) / 2.0))
        top = int(round((size[1] - input_size) / 2.0))
        image = image.crop((left, top, left + input_size, top + input_size))
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        return pixels[None].copy()
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def arrays_to_pixels(images: np.ndarray, input_size: int, grayscale: bool) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, 3) arrays -> uint8 (N, C, S, S), resized as `to_pixels`."""
    images = np.asarray(images, dtype=np.uint8)
    out = np.empty((len(images), 1 if grayscale else 3, input_size, input_size), np.uint8)
    for i, array in enumerate(images):
        image = Image.fromarray(array)
        out[i] = to_pixels(image.convert("L" if grayscale else "RGB"), input_size)
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to floats in [0, 1], the input every edgecls model takes."""
    return images.float().div_(255.0)
