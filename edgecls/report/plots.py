"""PNG figures of a training run: learning curves and the confusion matrix; and of an ablation.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot: rendering goes
through the Agg backend, no display is needed, and no global figure registry can leak memory
across many runs in one process. Text is drawn as written (class names may hold `$`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edgecls.report.escape import drawn_as_plain_text
from edgecls.report.grid import captioned_grid

DPI = 120
ANNOTATE_MAX_CLASSES = 20
TICK_LABELS_MAX_CLASSES = 50


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _line_axes(title: str, ylabel: str, epochs: list[int]) -> tuple[Figure, Axes]:
    """A figure with one axes styled for per-epoch curves, whole epochs on the x axis."""
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # Half an epoch of margin also gives a single-epoch run a sensible x range.
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


@drawn_as_plain_text
def plot_history(history: list[dict], out_dir: Path) -> list[Path]:
    """Write loss.png, accuracy.png and lr.png to `out_dir` so a run can be judged at a glance."""
    if not history:
        raise ValueError("history is empty: nothing to plot")
    out_dir = Path(out_dir)
    epochs = [row["epoch"] for row in history]
    # Markers keep a single-epoch run visible, where a line has no length.
    style = {"marker": "o", "markersize": 3}

    fig, ax = _line_axes("Loss", "cross-entropy loss", epochs)
    ax.plot(epochs, [row["train_loss"] for row in history], label="train", **style)
    ax.plot(epochs, [row["val_loss"] for row in history], label="validation", **style)
    ax.legend()
    loss_path = _save(fig, out_dir / "loss.png")

    fig, ax = _line_axes("Validation accuracy", "%", epochs)
    top1 = [100 * row["val_top1"] for row in history]
    ax.plot(epochs, top1, label="top-1", **style)
    ax.plot(epochs, [100 * row["val_top5"] for row in history], label="top-5", **style)
    ax.plot(epochs, [100 * row["val_map"] for row in history], label="mAP", **style)
    best = int(np.argmax(top1))
    ax.axvline(epochs[best], color="grey", linestyle="--", linewidth=1)
    ax.plot(
        epochs[best],
        top1[best],
        marker="*",
        markersize=14,
        color="C0",
        linestyle="none",
        label=f"best top-1 {top1[best]:.1f}% (epoch {epochs[best]})",
    )
    ax.legend(loc="best")
    accuracy_path = _save(fig, out_dir / "accuracy.png")

    fig, ax = _line_axes("Learning rate", "learning rate", epochs)
    lrs = [row["lr"] for row in history]
    ax.plot(epochs, lrs, color="C3", **style)
    # A schedule that reaches exactly 0 cannot be drawn on a log axis.
    if min(lrs) > 0:
        ax.set_yscale("log")
    lr_path = _save(fig, out_dir / "lr.png")

    return [loss_path, accuracy_path, lr_path]


@drawn_as_plain_text
def plot_confusion_matrix(
    confusion: list[list[int]], classes: list[str], path: Path, normalize: bool = True
) -> Path:
    return _save(confusion_figure(confusion, classes, normalize), Path(path))


@drawn_as_plain_text
def confusion_figure(
    confusion: list[list[int]], classes: list[str], normalize: bool = True
) -> Figure:
    """Heat map of true vs predicted class; row-normalised so rare classes are as visible."""
    counts = np.asarray(confusion, dtype=np.int64)
    num_classes = len(classes)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"confusion shape {counts.shape} does not match {num_classes} classes")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    else:
        values = counts.astype(np.float64)

    side = float(np.clip(3 + 0.22 * num_classes, 6, 16))
    fig = Figure(figsize=(side + 1.5, side), layout="tight")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(
        "fraction of true class" if normalize else "samples"
    )
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")

    if num_classes <= TICK_LABELS_MAX_CLASSES:
        fontsize = 9 if num_classes <= 20 else 7
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, classes, rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks, classes, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"predicted class ({num_classes} classes, labels hidden)")
        ax.set_ylabel(f"true class ({num_classes} classes, labels hidden)")

    if num_classes <= ANNOTATE_MAX_CLASSES:
        threshold = values.max() / 2
        for (row, col), count in np.ndenumerate(counts):
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=11 if num_classes <= 10 else 8,
                color="white" if values[row, col] > threshold else "black",
            )
    return fig


@drawn_as_plain_text
def plot_lr_range_test(
    lrs: list[float], losses: list[float], suggestion: float, path: Path
) -> Path:
    """Smoothed training loss against the LR of the range test, the suggestion marked."""
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.add_subplot()
    ax.plot(lrs, losses, marker=".", markersize=3)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested lr {suggestion:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.set_title("LR range test (after one epoch of fine-tuning)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


@drawn_as_plain_text
def plot_ablation(labels: list[str], top1_percent: list[float], out_dir: Path) -> Path:
    """One bar per ablation row, its mean validation top-1 written on it."""
    fig = Figure(figsize=(7, 0.5 * len(labels) + 1.5), layout="tight")
    ax = fig.add_subplot()
    positions = np.arange(len(labels))
    bars = ax.barh(positions, top1_percent, color="#4C72B0")
    ax.bar_label(bars, fmt="%.2f", padding=3)
    ax.set_yticks(positions, labels)
    ax.invert_yaxis()  # rows top to bottom, as in the table
    low = min(top1_percent)
    ax.set_xlim(max(0.0, low - (max(top1_percent) - low) - 1), 100)
    ax.set_xlabel("validation top-1 %")
    ax.set_title("ablation")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, out_dir / "ablation.png")


@drawn_as_plain_text
def plot_reliability(calibration: dict, path: Path) -> Path:
    """Reliability diagrams before and after temperature scaling: accuracy per confidence bin
    against the diagonal a calibrated model follows, with each ECE in the legend."""
    split = "test" if "test" in calibration else "val"
    fig = Figure(figsize=(6, 5), layout="tight")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for key, label in ((split, "as trained"), (f"{split}_calibrated", "temperature-scaled")):
        bins = calibration[key]
        shown = [i for i, n in enumerate(bins["count"]) if n]
        ax.plot(
            [bins["confidence"][i] for i in shown],
            [bins["accuracy"][i] for i in shown],
            marker="o",
            label=f"{label} (ECE {bins['ece']:.3f})",
        )
    ax.set_title(f"Reliability on {split} (T = {calibration['temperature']:.2f})")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_mistakes(
    images: np.ndarray, true: list[str], predicted: list[str], confidence: list[float], path: Path
) -> Path:
    """The most confident mistakes as a grid of thumbnails (uint8 N, C, S, S), each captioned
    with its true and predicted class and the probability the model gave the wrong one."""
    captions = [
        f"true {t}\npred {p} ({c:.0%})" for t, p, c in zip(true, predicted, confidence, strict=True)
    ]
    return captioned_grid([image.transpose(1, 2, 0) for image in images], captions, path)
