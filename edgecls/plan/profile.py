"""Step 1 of planning: what the data holds, from file headers (nothing decoded for training)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgecls.config import Config
from edgecls.errors import UserError
from edgecls.plan.measure import decode_seconds

# Built-ins are arrays in memory: reading one image costs next to nothing.
BUILTIN_DECODE_SECONDS = 0.0005
# Built-ins have no files to read headers from: what they hold.
BUILTIN_PROFILES = {
    "digits": (1797, 10, 8, True),
    "mnist5k": (5000, 10, 28, True),
    "fashion-mnist": (60000, 10, 28, True),
    "fashionmnist": (60000, 10, 28, True),
    "cifar10": (50000, 10, 32, False),
    "cifar100": (50000, 100, 32, False),
    "svhn": (73257, 10, 32, False),
}
PROFILE_SAMPLE = 300  # image headers read to learn sizes and colour
VAL_FRACTION = Config.val_fraction  # what is split off for validation when DATA has no val/
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class DataProfile:
    images: int  # in every split
    classes: int
    median_side: int  # the shorter side of a typical image, in pixels
    grayscale: bool
    imbalance: float  # largest class / smallest class
    training_images: int = 0  # what an epoch trains on (the train split less its validation part)
    validation_images: int = 0
    files: bool = False  # a folder or list file (which the disk cache can hold), not a built-in
    decode_seconds_per_image: float = BUILTIN_DECODE_SECONDS
    val_fraction: float | None = None  # the share of train split off; None: DATA has a val/


def profile_data(spec: str, val_fraction: float = VAL_FRACTION) -> DataProfile:
    """Count, classes, typical size and colour of DATA, from file headers (nothing decoded);
    without a val/ folder, `val_fraction` of the training images are counted as validation."""
    from edgecls.data import BUILTIN_DATASETS
    from edgecls.data.loader import no_such_data
    from edgecls.data.sources import discover
    from edgecls.data.splits import Problems

    if spec.lower() in BUILTIN_PROFILES and not Path(spec).exists():
        count, classes, side, grey = BUILTIN_PROFILES[spec.lower()]
        validation = round(val_fraction * count)
        return DataProfile(
            count,
            classes,
            side,
            grey,
            1.0,
            count - validation,
            validation,
            val_fraction=val_fraction,
        )
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.lower() in BUILTIN_DATASETS:  # a torchvision dataset: its root says more
            return DataProfile(0, 0, 224, False, 1.0)
        raise no_such_data(spec)
    problems = Problems()
    files = discover(path, problems)
    if problems.errors:  # the same first problem loading the data would stop at
        raise UserError(problems.errors[0])
    items = [item for split in files.values() for item in split.items]
    per_class = Counter(label for _, label in files["train"].items)
    sides, grey = _sides_and_grey([file for file, _ in items])
    median_side = sides[len(sides) // 2] if sides else 224
    train = len(files["train"].items)
    validation = len(files["val"].items) if "val" in files else round(val_fraction * train)
    return DataProfile(
        training_images=train if "val" in files else train - validation,
        validation_images=validation,
        images=len(items),
        classes=len(per_class),
        median_side=median_side,
        grayscale=bool(sides) and grey == len(sides),
        imbalance=max(per_class.values()) / max(1, min(per_class.values())) if per_class else 1.0,
        files=True,
        val_fraction=None if "val" in files else val_fraction,
        decode_seconds_per_image=decode_seconds(
            [file for file, _ in items], min(224, math.ceil(median_side / 32) * 32)
        ),
    )


def _sides_and_grey(files: list[Path]) -> tuple[list[int], int]:
    """The shorter sides (sorted) of a spread sample of about PROFILE_SAMPLE images, and how many
    of them are grey; files that do not open are left out, as loading reports them."""
    sides, grey = [], 0
    for file in files[:: max(1, len(files) // PROFILE_SAMPLE)]:
        try:
            with Image.open(file) as image:
                sides.append(min(image.size))
                grey += image.mode in GREY_MODES or _looks_grey(image)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sorted(sides), grey


def _looks_grey(image: Image.Image) -> bool:
    """An RGB image whose channels agree (saved as colour, grey in fact), checked on a thumbnail."""
    if image.mode not in ("RGB", "RGBA", "P"):
        return False
    small = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int16)
    return bool((small.max(axis=2) - small.min(axis=2) <= 8).all())
