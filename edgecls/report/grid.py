"""Grids of captioned thumbnails (mistakes, saliency overlays) drawn with Pillow.

A grid is pixels and a few lines of text: Pillow composes one in about 20 ms where a matplotlib
figure of 18 subplots took 0.5 s to save. The captions use the DejaVu Sans font matplotlib ships,
so class names render with the same glyphs as in the other figures, and as written (no mathtext).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE_SIDE = 160  # thumbnails are enlarged by a whole factor to at least this many pixels
FONT_SIZE = 12
LINE_HEIGHT = 15
GAP = 8  # pixels between cells and around the grid
BACKGROUND = (255, 255, 255)
TEXT = (34, 34, 34)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    spec = importlib.util.find_spec("matplotlib")
    locations = spec.submodule_search_locations if spec else None
    for location in locations or []:
        path = Path(location) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            # The basic layout: raqm's fails on control characters a folder name can hold.
            return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=ImageFont.Layout.BASIC)
    return ImageFont.load_default(FONT_SIZE)


def enlarged(tile: np.ndarray, min_side: int = TILE_SIDE) -> np.ndarray:
    """uint8 (H, W, 3) or (H, W) -> (kH, kW, 3), each pixel a k x k square (k whole), so small
    images stay sharp."""
    if tile.ndim == 2:
        tile = tile[..., None]
    if tile.shape[-1] == 1:
        tile = np.repeat(tile, 3, axis=-1)
    factor = max(1, -(-min_side // max(tile.shape[:2])))
    return np.kron(tile, np.ones((factor, factor, 1), dtype=tile.dtype))


def _fitted(draw: ImageDraw.ImageDraw, line: str, font, width: int) -> str:
    """`line`, shortened with an ellipsis where it is wider than its cell."""
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "…", font=font) > width:
        line = line[:-1]
    return line + "…"


def captioned_grid(
    tiles: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 6
) -> Path:
    """A PNG of `tiles` (uint8 H, W, 3 or H, W) in rows of `columns`, each above its caption
    (lines split at newlines); the folder is created if needed."""
    cells = [enlarged(tile) for tile in tiles]
    columns = min(columns, max(1, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    lines = max((caption.count("\n") + 1 for caption in captions), default=0)
    width = max((cell.shape[1] for cell in cells), default=TILE_SIDE)
    height = max((cell.shape[0] for cell in cells), default=TILE_SIDE) + lines * LINE_HEIGHT
    canvas = Image.new(
        "RGB", (GAP + columns * (width + GAP), GAP + rows * (height + GAP)), BACKGROUND
    )
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for index, (cell, caption) in enumerate(zip(cells, captions, strict=True)):
        left = GAP + (index % columns) * (width + GAP)
        top = GAP + (index // columns) * (height + GAP)
        canvas.paste(Image.fromarray(cell), (left + (width - cell.shape[1]) // 2, top))
        for number, line in enumerate(caption.split("\n")):
            y = top + cell.shape[0] + number * LINE_HEIGHT
            line = _fitted(draw, line, font, width)
            draw.text((left + width // 2, y), line, fill=TEXT, font=font, anchor="ma")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", compress_level=1)  # 18 tiles: 0.05 s, 0.15 at level 6
    return path
