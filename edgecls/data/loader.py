"""load_dataset: turn any accepted spec into decoded, checked train/val/test splits."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgecls.data.builtin import BUILTIN_DATASETS, load_builtin
from edgecls.data.images import BadImageError, load_image, printable_path, to_tensor
from edgecls.data.sources import Box, SplitFiles, discover
from edgecls.data.splits import Dataset, ImageSplit, Problems, split_off_val, warn_imbalance
from edgecls.errors import UserError
from edgecls.report.progress import progress_bar

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
) -> Dataset:
    """Load a folder, list file or built-in; images of list rows with a box are cropped to it
    unless `bbox_crop` is False.

    strict=True raises UserError with the first fatal problem; strict=False (check-data) returns
    the Dataset with all problems listed, its splits possibly empty.
    """
    if input_size < 1:
        raise UserError(f"input_size must be a positive number of pixels, got {input_size}")
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    problems = Problems()
    path = Path(spec).expanduser()
    if path.exists():
        dataset = _load_files(
            path, input_size, grayscale, val_fraction, seed, progress, problems, bbox_crop
        )
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
    )


def _load_files(
    path: Path,
    input_size: int,
    grayscale: bool,
    val_fraction: float,
    seed: int,
    progress: bool,
    problems: Problems,
    bbox_crop: bool,
) -> Dataset:
    files = discover(path, problems)
    all_files = list(dict.fromkeys(file for split in files.values() for file, _ in split.items))
    boxes = (
        {f: box for split in files.values() for f, box in split.boxes.items()} if bbox_crop else {}
    )
    images = _decode(all_files, input_size, grayscale, progress, boxes)
    decoded = dict(zip(all_files, images, strict=True))
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
            if label in index and isinstance(decoded[file], torch.Tensor)
        ]
        if kept:
            splits[name] = ImageSplit(
                torch.stack([decoded[file] for file, _ in kept]),
                torch.tensor([index[label] for _, label in kept], dtype=torch.int64),
                [printable_path(file) for file, _ in kept],
            )
        else:
            splits[name] = ImageSplit.empty(1 if grayscale else 3, input_size)
    return _finish(printable_path(path), classes, splits, skipped, val_fraction, seed, problems)


def _decode(
    files: list[Path],
    input_size: int,
    grayscale: bool,
    progress: bool,
    boxes: dict[Path, Box] | None = None,
) -> list[torch.Tensor | BadImageError]:
    """Decode in threads (PIL releases the GIL), cropped to a file's box if it has one; failures
    are returned so they can be listed."""
    boxes = boxes or {}

    def decode_one(file: Path) -> torch.Tensor | BadImageError:
        try:
            box = boxes.get(file)
            image = load_image(file, grayscale, min_size=None if box else input_size)
            if box is not None:
                x0, y0, x1, y1 = box
                if x0 >= image.width or y0 >= image.height:
                    return BadImageError(file, f"box {box} lies outside its {image.size} image")
                image = image.crop((x0, y0, min(x1, image.width), min(y1, image.height)))
            return to_tensor(image, input_size)
        except BadImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(decode_one, files)
        return list(progress_bar(results, len(files), "decoding images", progress))


def _check_classes(
    path: Path,
    files: dict[str, SplitFiles],
    decoded: dict[Path, torch.Tensor | BadImageError],
    problems: Problems,
) -> None:
    """Problems that only folder and list datasets can have: empty, unknown or too few classes."""
    if not decoded:
        problems.error(f"no images found in {path} (extensions: jpg, png, bmp, gif, tif, webp)")
        return
    train_classes = set(files["train"].classes)
    for split in files.values():
        readable = Counter(
            label for f, label in split.items if isinstance(decoded[f], torch.Tensor)
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
