"""The in-memory dataset types, the problem log, and the seeded stratified validation split."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecls.data.cache import mapped_subset

if TYPE_CHECKING:
    import torch


class ImageSplit:
    """Decoded images of one split; `sources` says where each came from, for error analysis.

    Held as numpy arrays (`pixels`, `targets`), so that reading and checking data needs no torch;
    training and evaluation read `images` and `labels`, torch tensors of the same memory."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels, sources: list[str]) -> None:
        self.pixels = np.asarray(images, dtype=np.uint8)  # (N, C, S, S)
        self.targets = np.asarray(labels, dtype=np.int64)  # (N,)
        self.sources = sources

    @cached_property
    def images(self) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.pixels)

    @cached_property
    def labels(self) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.targets)

    @classmethod
    def empty(cls, channels: int, input_size: int) -> ImageSplit:
        images = np.empty((0, channels, input_size, input_size), dtype=np.uint8)
        return cls(images, np.empty(0, dtype=np.int64), [])

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> ImageSplit:
        return ImageSplit(
            mapped_subset(self.pixels, indices),
            self.targets[np.asarray(indices, dtype=np.int64)],
            [self.sources[i] for i in indices],
        )

    def class_counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.targets, minlength=n_classes).tolist()

    def channel_statistics(self, chunk: int = 1024) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the pixels in [0, 1] (paper 001
        normalizes with the training set's own), a chunk of images at a time."""
        total = np.zeros(self.pixels.shape[1], dtype=np.float64)
        squares = np.zeros_like(total)
        for start in range(0, len(self.pixels), chunk):
            pixels = self.pixels[start : start + chunk].astype(np.float64) / 255
            total += pixels.sum(axis=(0, 2, 3))
            squares += (pixels**2).sum(axis=(0, 2, 3))
        count = max(1, self.pixels.size // self.pixels.shape[1])
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
        return mean.tolist(), std.tolist()


@dataclass
class Dataset:
    """Everything training and `check-data` need, including what went wrong while loading."""

    name: str
    classes: list[str]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit | None
    skipped: list[tuple[str, str]]
    problems: list[str]
    fatal: bool
    storage: str = "memory"  # or "disk cache FOLDER"


def _digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()[:16]


def data_summary(dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint remembers of its data, to notice on resume that it changed: the images
    of all splits together, and each split's images with their labels."""
    splits = {"train": dataset.train, "val": dataset.val}
    if dataset.test is not None:
        splits["test"] = dataset.test
    return {
        "images": sum(len(split) for split in splits.values()),
        "all": _digest([source for split in splits.values() for source in split.sources]),
        "splits": {
            name: _digest(
                [
                    f"{s}\t{int(y)}"
                    for s, y in zip(split.sources, split.targets.tolist(), strict=True)
                ]
            )
            for name, split in splits.items()
        },
    }


def describe_changes(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """How the data differs from a checkpoint's: "" when it is the same."""
    if saved["all"] != now["all"]:
        difference = now["images"] - saved["images"]
        if difference > 0:
            return f"{difference} images added"
        if difference < 0:
            return f"{-difference} images removed"
        return "images replaced by others"
    if saved["splits"] != now["splits"]:
        return (
            "the images are split or labelled differently: validation images may have been "
            "trained on"
        )
    return ""


class Problems:
    """Collects problems so check-data can show them all; strict loading raises the first error."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)
        self.lines.append(f"error: {message}")

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")


def split_off_val(
    train: ImageSplit, classes: list[str], fraction: float, seed: int, problems: Problems
) -> tuple[ImageSplit, ImageSplit]:
    """Stratified, seeded split so every class is in val and reruns see the same images."""
    labels = train.targets
    counts = Counter(labels.tolist())
    nothing = train.subset(np.empty(0, dtype=np.int64))
    if not counts:
        return train, nothing
    rare = [classes[c] for c, n in sorted(counts.items()) if n < 2]
    n_val = max(round(len(labels) * fraction), len(counts))
    if rare or len(labels) - n_val < len(counts):
        why = f"class {rare[0]!r} has only 1 image" if rare else "too few images per class"
        problems.error(f"cannot split off a validation set: {why} (add images or a val/ folder)")
        return train, nothing
    from sklearn.model_selection import train_test_split  # 1.5 s to import: only when used

    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=n_val, stratify=labels, random_state=seed
    )
    return train.subset(np.sort(train_idx)), train.subset(np.sort(val_idx))


IMBALANCE_RATIO = 10  # largest / smallest class above which training compensates (balance=auto)


def imbalance_ratio(split: ImageSplit, num_classes: int) -> float:
    """Images of the largest class per image of the smallest (inf when a class has none)."""
    counts = split.class_counts(num_classes)
    return max(counts) / min(counts) if min(counts) else float("inf")


def warn_imbalance(
    split_name: str, split: ImageSplit, classes: list[str], problems: Problems
) -> None:
    """Flag strong imbalance: it silently hurts rare classes unless training compensates."""
    counts = split.class_counts(len(classes))
    if len(split) and imbalance_ratio(split, len(classes)) > IMBALANCE_RATIO:
        lo, hi = counts.index(min(counts)), counts.index(max(counts))
        problems.warn(
            f"{split_name} is imbalanced: {classes[lo]!r} has {counts[lo]} images, "
            f"{classes[hi]!r} has {counts[hi]} (training compensates: balance=auto)"
        )
