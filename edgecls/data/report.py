"""describe(): the plain-text report of `edgecls check-data`."""

from __future__ import annotations

from edgecls.data.splits import Dataset, ImageSplit


def describe(dataset: Dataset) -> str:
    """Sizes, class balance, skipped files and problems: what to fix before training."""
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    n_classes = len(dataset.classes)
    lines = [f"dataset: {dataset.name} ({n_classes} classes)"]
    for name, split in splits.items():
        lines.append(f"{name:<5}  {_summary(split, dataset.classes)}")

    present = {name: split for name, split in splits.items() if split is not None}
    counts = {name: split.class_counts(n_classes) for name, split in present.items()}
    width = max([len(c) for c in dataset.classes] + [5])
    lines += ["", "class balance:", f"  {'class':<{width}}" + "".join(f"{n:>8}" for n in present)]
    for i, class_name in enumerate(dataset.classes):
        lines.append(f"  {class_name:<{width}}" + "".join(f"{c[i]:>8}" for c in counts.values()))

    lines += ["", f"skipped files: {len(dataset.skipped)}"]
    lines += [f"  {path}: {reason}" for path, reason in dataset.skipped]
    lines += ["", f"problems: {len(dataset.problems)}"]
    lines += [f"  {problem}" for problem in dataset.problems]
    verdict = "NOT trainable: fix the errors above" if dataset.fatal else "ready to train"
    lines += ["", f"status: {verdict}"]
    return "\n".join(lines)


def _summary(split: ImageSplit | None, classes: list[str]) -> str:
    if split is None:
        return "none"
    counts = split.class_counts(len(classes))
    present = [c for c in counts if c]
    text = f"{len(split)} images, {len(present)} classes"
    if present:
        low, high = min(counts), max(counts)
        text += f", per class min {low} / max {high} (ratio {low / high:.2f})"
    return text
