"""Plots are written as real, reasonably sized PNG files for typical and edge-case runs."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecls.report.plots import plot_confusion_matrix, plot_history


def _history(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "lr": 0.1 * 0.5**e,
            "train_loss": 2.0 / e,
            "val_loss": 2.2 / e + 0.01 * e,
            "val_top1": min(0.95, 0.3 + 0.1 * e),
            "val_top5": min(1.0, 0.6 + 0.08 * e),
            "val_map": min(0.97, 0.45 + 0.09 * e),
            "seconds": 12.5,
        }
        for e in range(1, epochs + 1)
    ]


def _assert_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height
        assert image.width <= 4000 and image.height <= 4000


@pytest.mark.parametrize("epochs", [1, 12])
def test_plot_history_writes_three_pngs(tmp_path: Path, epochs: int):
    out_dir = tmp_path / "plots"  # does not exist yet
    paths = plot_history(_history(epochs), out_dir)
    assert [p.name for p in paths] == ["loss.png", "accuracy.png", "lr.png"]
    for path in paths:
        assert path.parent == out_dir
        _assert_png(path)


def test_plot_history_lr_reaching_zero(tmp_path: Path):
    history = _history(3)
    history[-1]["lr"] = 0.0
    for path in plot_history(history, tmp_path):
        _assert_png(path)


def test_plot_history_rejects_empty(tmp_path: Path):
    with pytest.raises(ValueError):
        plot_history([], tmp_path)


@pytest.mark.parametrize("normalize", [True, False])
def test_plot_confusion_matrix_small(tmp_path: Path, normalize: bool):
    confusion = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]  # last class has no samples
    path = plot_confusion_matrix(
        confusion, ["cat", "dog", "bird"], tmp_path / "cm.png", normalize=normalize
    )
    assert path == tmp_path / "cm.png"
    _assert_png(path)


@pytest.mark.parametrize("num_classes", [50, 100])
def test_plot_confusion_matrix_many_classes(tmp_path: Path, num_classes: int):
    rng = np.random.default_rng(0)
    confusion = np.eye(num_classes, dtype=int) * 20 + rng.integers(0, 3, (num_classes,) * 2)
    classes = [f"class_{i:03d}" for i in range(num_classes)]
    path = plot_confusion_matrix(confusion.tolist(), classes, tmp_path / "cm.png")
    _assert_png(path, min_width=600, min_height=600)


def test_plot_confusion_matrix_shape_mismatch(tmp_path: Path):
    with pytest.raises(ValueError):
        plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "cm.png")
