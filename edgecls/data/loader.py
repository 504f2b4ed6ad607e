"""load_dataset: turn any accepted spec into decoded, checked train/val/test splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecls.console import progress_bar
from edgecls.data.builtin import ARRAY_BUILTINS, BUILTIN_DATASETS, builtin_arrays, load_builtin
from edgecls.data.cache import (
    CACHE_MODES,
    DiskCache,
    choose_cache,
    mapped_subset,
)
from edgecls.data.decoding import decode_in_parallel
from edgecls.data.images import (
    BadImageError,
    arrays_to_pixels,
    load_image,
    printable_path,
    to_pixels,
)
from edgecls.data.sources import Box, SplitFiles, discover
from edgecls.data.splits import Dataset, ImageSplit, Problems, split_off_val, warn_imbalance
from edgecls.errors import UserError

if TYPE_CHECKING:
    from edgecls.config import Config


def load_dataset(
    spec: str,
    *,
    input_size: int,
    grayscale: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    data_root: str | None = None,
    download: bool = False,
    strict: bool = True,
    progress: bool = True,
    bbox_crop: bool = True,
    cache: str = "memory",
    cache_dir: str | None = None,
) -> Dataset:
    """Load a folder, list file or built-in; images of list rows with a box are cropped to it
    unless `bbox_crop` is False. A folder or list file's images are decoded into memory or,
    with `cache` disk (or auto, when they would not fit), into the disk cache under `cache_dir`.

    strict=True raises UserError with the first fatal problem; strict=False (check-data) returns
    the Dataset with all problems listed, its splits possibly empty.
    """
    if input_size < 1:
        raise UserError(f"input_size must be a positive number of pixels, got {input_size}")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if cache not in CACHE_MODES:
        raise UserError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    problems = Problems()
    path = Path(spec).expanduser()
    if path.exists():
        decoder = Decoder(input_size, grayscale, progress, bbox_crop, cache, cache_dir)
        dataset = _load_files(path, decoder, val_fraction, seed, problems)
    elif spec.lower() in BUILTIN_DATASETS:
        name = spec.lower()
        parts = load_builtin(
            name,
            input_size=input_size,
            grayscale=grayscale,
            data_root=data_root,
            download=download,
            progress=progress,
        )
        dataset = _finish(name, parts.classes, parts.splits, [], val_fraction, seed, problems)
    else:
        raise no_such_data(spec)
    if strict and problems.errors:
        raise UserError(problems.errors[0])
    return dataset


def no_such_data(spec: str) -> UserError:
    return UserError(
        f"no such file, folder or built-in dataset {spec!r} "
        f"(built-ins: {', '.join(BUILTIN_DATASETS)})"
    )


def load_configured_dataset(
    config: Config, data: str | None = None, *, progress: bool = True
) -> Dataset:
    """The dataset `data` (default: the config's own) decoded as the config says: input size,
    channels, validation split and seed. Training, evaluation and export all read data this way."""
    spec = data or config.data
    if spec is None:
        raise UserError("no dataset given")
    return load_dataset(
        spec,
        input_size=config.input_size,
        grayscale=config.grayscale,
        val_fraction=config.val_fraction,
        seed=config.seed,
        data_root=config.data_root,
        download=config.download,
        progress=progress,
        bbox_crop=config.bbox_crop,
        cache=config.cache,
        cache_dir=config.cache_dir,
    )


class Decoder:
    """How a folder's files become pixels: size, channels, boxes, and where they are kept."""

    def __init__(
        self,
        input_size: int,
        grayscale: bool,
        progress: bool,
        bbox_crop: bool,
        cache: str,
        cache_dir: str | None,
    ) -> None:
        self.input_size, self.grayscale, self.progress = input_size, grayscale, progress
        self.bbox_crop, self.cache, self.cache_dir = bbox_crop, cache, cache_dir
        self.disk: DiskCache | None = None
        self.images: np.ndarray | None = None  # every file's pixels, in memory or mapped

    def decode(self, files: list[Path], boxes: dict[Path, Box]) -> dict[Path, int | BadImageError]:
        """Each file's row in `images` or why it failed."""
        boxes = boxes if self.bbox_crop else {}
        decode_one = partial(
            decode_file, input_size=self.input_size, grayscale=self.grayscale, boxes=boxes
        )
        channels = 1 if self.grayscale else 3
        mode = choose_cache(self.cache, len(files), channels, self.input_size)
        kept = None
        if files and mode == "memory" and self.cache == "auto":
            kept = DiskCache.for_files(
                files, self.input_size, self.grayscale, boxes, self.cache_dir, create=False
            )
        if files and mode == "disk":
            self.disk = DiskCache.for_files(
                files, self.input_size, self.grayscale, boxes, self.cache_dir
            )
        elif kept is not None and kept.complete:  # decoded by an earlier run: mapped
            self.disk = kept
        if self.disk is not None:
            self.images, failures = self.disk.build(files, decode_one, self.progress)
        else:
            self.images, failures = self._decode_in_memory(files, decode_one)
            if kept is not None:
                kept.keep(self.images, failures)
        return {
            file: failure or row
            for row, (file, failure) in enumerate(zip(files, failures, strict=True))
        }

    def _decode_in_memory(
        self, files: list[Path], decode_one: Callable[[Path], np.ndarray | BadImageError]
    ) -> tuple[np.ndarray, list[BadImageError | None]]:
        """Written into one array as they come: a list of images stacked at the end, then
        split, held 3.2 times the decoded size at its peak (`python benchmarks/scaling.py`,
        benchmarks/results/scaling_caches_c5fac84.md: 22.8 GiB for 7.0 GiB at 224 px)."""
        channels = 1 if self.grayscale else 3
        images = np.empty((len(files), channels, self.input_size, self.input_size), np.uint8)
        failures: list[BadImageError | None] = [None] * len(files)
        results = decode_in_parallel(decode_one, files)
        for row, image in enumerate(
            progress_bar(results, len(files), "decoding images", self.progress)
        ):
            if isinstance(image, BadImageError):
                failures[row] = image
            else:
                images[row] = image
        return images, failures

    def rows(self, rows: list[int]) -> np.ndarray:
        """The images of these rows: a view where they are one run (a split of its own folder)."""
        return mapped_subset(self.images, rows)

    @property
    def storage(self) -> str:
        return "memory" if self.disk is None else f"disk cache {self.disk.folder}"


def _load_files(
    path: Path, decoder: Decoder, val_fraction: float, seed: int, problems: Problems
) -> Dataset:
    files = discover(path, problems)
    all_files = list(dict.fromkeys(file for split in files.values() for file, _ in split.items))
    boxes = {f: box for split in files.values() for f, box in split.boxes.items()}
    decoded = decoder.decode(all_files, boxes)
    skipped = [missing for split in files.values() for missing in split.missing]
    skipped += [(d.path, d.reason) for d in decoded.values() if isinstance(d, BadImageError)]
    _check_classes(path, files, decoded, problems)

    classes = files["train"].classes
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for name, split in files.items():
        kept = [
            (file, label)
            for file, label in split.items
            if label in index and not isinstance(decoded[file], BadImageError)
        ]
        if kept:
            splits[name] = ImageSplit(
                decoder.rows([decoded[file] for file, _ in kept]),
                np.array([index[label] for _, label in kept], dtype=np.int64),
                [printable_path(file) for file, _ in kept],
            )
        else:
            splits[name] = ImageSplit.empty(1 if decoder.grayscale else 3, decoder.input_size)
    dataset = _finish(printable_path(path), classes, splits, skipped, val_fraction, seed, problems)
    dataset.storage = decoder.storage
    return dataset


def decode_file(
    file: Path, *, input_size: int, grayscale: bool, boxes: dict[Path, Box]
) -> np.ndarray | BadImageError:
    """One file's pixels, cropped to its box if it has one (run in threads: PIL releases the
    GIL); a failure is returned so that it can be listed."""
    try:
        box = boxes.get(file)
        image = load_image(file, grayscale, min_size=None if box else input_size)
        if box is not None:
            x0, y0, x1, y1 = box
            if x0 >= image.width or y0 >= image.height:
                return BadImageError(file, f"box {box} lies outside its {image.size} image")
            image = image.crop((x0, y0, min(x1, image.width), min(y1, image.height)))
        return to_pixels(image, input_size)
    except BadImageError as exc:
        return exc


def _check_classes(
    path: Path,
    files: dict[str, SplitFiles],
    decoded: dict[Path, int | BadImageError],
    problems: Problems,
) -> None:
    """Problems that only folder and list datasets can have: empty, unknown or too few classes."""
    if not decoded:
        problems.error(f"no images found in {path} (extensions: jpg, png, bmp, gif, tif, webp)")
        return
    train_classes = set(files["train"].classes)
    for split in files.values():
        readable = Counter(
            label for f, label in split.items if not isinstance(decoded[f], BadImageError)
        )
        listed = Counter(label for _, label in split.items)
        for name in split.classes:
            if readable[name] == 0:
                unreadable = f" ({listed[name]} unreadable)" if listed[name] else ""
                problems.error(
                    f"class {name!r} in {split.origin} has no readable images{unreadable}"
                )
        unknown = sorted(set(split.classes) - train_classes)
        if unknown:
            problems.error(
                f"class(es) {', '.join(map(repr, unknown))} in {split.origin} "
                "are not in the training set"
            )
        absent = sorted(train_classes - set(split.classes))
        if absent and split is not files["train"]:
            problems.warn(
                f"{split.origin} has no images of class(es) {', '.join(map(repr, absent))}"
            )
    if not train_classes:
        problems.error(f"no class folders or labels in {files['train'].origin}")
    elif len(train_classes) == 1:
        problems.error(
            f"only one class ({next(iter(train_classes))!r}) in {files['train'].origin}: "
            "need at least 2 classes"
        )


def _finish(
    name: str,
    classes: list[str],
    splits: dict[str, ImageSplit],
    skipped: list[tuple[str, str]],
    val_fraction: float,
    seed: int,
    problems: Problems,
) -> Dataset:
    """Split val off train when the source has none, and flag what training would suffer from."""
    train, val = splits["train"], splits.get("val")
    if val is None:
        train, val = split_off_val(train, classes, val_fraction, seed, problems)
    warn_imbalance("train", train, classes, problems)
    if skipped:
        problems.warn(f"{len(skipped)} unreadable or missing file(s) skipped")
    return Dataset(
        name=name,
        classes=classes,
        train=train,
        val=val,
        test=splits.get("test"),
        skipped=skipped,
        problems=problems.lines,
        fatal=bool(problems.errors),
    )


def labelled_sample(
    spec: str, *, per_class: int, side: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to `per_class` training images of each class of DATA as RGB uint8 (N, 3, side, side)
    and their labels, for a quick probe of the data before training; None where the images are
    not at hand (torchvision built-ins) or fewer than two classes decode."""
    rng = np.random.default_rng(seed)
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.lower() not in ARRAY_BUILTINS:
            return None
        try:
            _, images, labels = builtin_arrays(spec.lower())["train"]
        except UserError:  # Fashion-MNIST's files are not installed
            return None
        keep = _per_class(np.asarray(labels), per_class, rng)
        return arrays_to_pixels(images[keep], side, grayscale=False), np.asarray(labels)[keep]
    files = discover(path, Problems())["train"]
    classes = sorted({label for _, label in files.items})
    labels = np.array([classes.index(label) for _, label in files.items])
    pixels, kept = [], []
    for index in _per_class(labels, per_class, rng):
        file = files.items[index][0]
        decoded = decode_file(file, input_size=side, grayscale=False, boxes=files.boxes)
        if not isinstance(decoded, BadImageError):
            pixels.append(decoded)
            kept.append(labels[index])
    if len(set(kept)) < 2:
        return None
    return np.stack(pixels), np.array(kept)


def _per_class(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(
        np.concatenate(
            [
                rng.choice(where, min(count, len(where)), replace=False)
                for where in (np.flatnonzero(labels == c) for c in np.unique(labels))
            ]
        )
    )
