"""Decoding image files of any common kind into 8-bit RGB or L, and resizing to square tensors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps

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


def to_tensor(image: Image.Image, input_size: int) -> torch.Tensor:
    """uint8 (C, S, S): shorter side resized to `input_size`, then a centred square crop."""
    return resize_batch(TF.pil_to_tensor(image).unsqueeze(0), input_size)[0]


def resize_batch(images: torch.Tensor, input_size: int) -> torch.Tensor:
    """Vectorised shorter-side resize + centre crop of uint8 (N, C, H, W), same as `to_tensor`."""
    if images.shape[-2:] != (input_size, input_size):
        images = TF.resize(images, [input_size], antialias=True)
        images = TF.center_crop(images, [input_size, input_size])
    return images.contiguous()


def arrays_to_tensor(
    images: np.ndarray | torch.Tensor, input_size: int, grayscale: bool, chunk: int = 4096
) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) arrays -> uint8 (N, C, S, S), in chunks to bound memory."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images.unsqueeze(-1)
    images = images.permute(0, 3, 1, 2)
    channels = 1 if grayscale else 3
    out = torch.empty((len(images), channels, input_size, input_size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        if grayscale and part.shape[1] == 3:
            part = TF.rgb_to_grayscale(part)
        out[start : start + chunk] = resize_batch(part, input_size)  # broadcasts 1 -> 3 channels
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to floats in [0, 1], the input every edgecls model takes."""
    return images.float().div_(255.0)
