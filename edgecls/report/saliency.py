"""Saliency maps drawn: a heat map over its image (enlarged when tiny), a grid of them for a run's
report, and the index page of `edgecls explain`. Plain arrays in, PNG and HTML out."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import matplotlib
import numpy as np
from PIL import Image

from edgecls import runs
from edgecls.report.grid import TILE_SIDE, captioned_grid, enlarged

ALPHA = 0.45  # the heat map's share of each overlay pixel
COLORMAP = "jet"  # blue: not used for the prediction; red: used most


def overlay(pixels: np.ndarray, heat: np.ndarray, min_side: int = TILE_SIDE) -> np.ndarray:
    """uint8 (D, D, 3): the image (uint8 C, S, S) enlarged with square pixels, its heat map
    (S, S in [0, 1]) enlarged smoothly, coloured and blended over it."""
    image = enlarged(pixels.transpose(1, 2, 0), min_side)
    side = image.shape[0]
    if side != heat.shape[0]:
        resized = Image.fromarray(np.asarray(heat, dtype=np.float32))
        heat = np.asarray(resized.resize((side, side), Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps[COLORMAP](np.clip(heat, 0, 1))[..., :3] * 255
    return (image * (1 - ALPHA) + colours * ALPHA).round().astype(np.uint8)


def plot_saliency(
    images: np.ndarray, maps: np.ndarray, captions: list[str], path: Path, columns: int = 6
) -> Path:
    """A grid of overlays (uint8 images N, C, S, S; maps N, S, S), each captioned."""
    tiles = [overlay(image, heat) for image, heat in zip(images, maps, strict=True)]
    return captioned_grid(tiles, captions, path, columns)


@dataclass
class Overlay:
    """One explained image: where it came from, what the model predicted, the overlay's file."""

    source: str
    label: str
    probability: float
    file: Path


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
figure { display: inline-block; margin: .5em; vertical-align: top; max-width: 220px; }
img { width: 200px; image-rendering: pixelated; } figcaption { font-size: .8em; color: #444; }
"""


def write_explain_page(overlays: list[Overlay], method: str, out_dir: Path) -> Path:
    """explain.html: every overlay of `edgecls explain` with its image's path and prediction,
    beside the PNGs it shows (linked by name, so the folder moves as a whole)."""
    figures = "\n".join(
        f'<figure><img src="{quote(item.file.name)}" alt="{html.escape(item.source)}">'
        f"<figcaption>{html.escape(item.source)}<br>predicted <b>{html.escape(item.label)}</b> "
        f"({item.probability:.1%})</figcaption></figure>"
        for item in overlays
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>edgecls explain"
        f"</title><style>{PAGE_STYLE}</style></head><body><h1>Saliency maps</h1>"
        f"<p>{html.escape(method)}. Red: the pixels the predicted class depends on most; blue: "
        f"the least.</p>\n{figures}\n</body></html>\n"
    )
    path = out_dir / "explain.html"
    runs.write_text(path, page)
    return path
