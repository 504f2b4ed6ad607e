"""End-to-end: the CLI trains, resumes, evaluates and predicts on real (tiny) data."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

from edgecls.cli import main

# Small and fast: the digits recipe (32x32, one channel, MobileNetV3-small), few epochs.
TINY = ["--recipe", "digits", "--quiet"]


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    return result


@pytest.fixture
def trained_run(digits_run) -> Path:
    return digits_run


@pytest.mark.slow
def test_train_writes_a_complete_run_folder_and_beats_chance(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["val_top1"] > 0.8  # chance is 0.1
    assert 0.0 <= metrics["val_top1"] <= metrics["val_top5"] <= 1.0
    assert 0.1 <= metrics["val_map"] <= 1.0
    assert metrics["epochs_trained"] == 10 and metrics["stopped_early"] is False
    assert metrics["stopped_by"] == "max_epochs"
    assert 1 <= metrics["best_epoch"] <= 10 and metrics["train_seconds"] > 0
    with open(trained_run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert set(rows[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "val_map",
        "rollbacks",
        "seconds",
    }
    best_row = max(rows, key=lambda r: float(r["val_top1"]))
    assert float(best_row["val_top1"]) == pytest.approx(metrics["val_top1"])
    for name in (
        "config.yaml",
        "best.pt",
        "last.pt",
        "loss.png",
        "accuracy.png",
        "lr.png",
        "confusion_val.png",
    ):
        assert (trained_run / name).is_file(), name
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "schedule", "rng", "config", "classes"} <= set(checkpoint)
    assert checkpoint["classes"] == [str(d) for d in range(10)]
    assert not list(trained_run.glob("*.tmp"))


@pytest.mark.slow
def test_existing_run_folder_is_not_overwritten(trained_run):
    before = (trained_run / "metrics.json").read_bytes()
    result = invoke("train", *TINY, "--epochs", "1", "--run-dir", str(trained_run))
    assert result.exit_code == 2
    assert "already holds files" in result.output
    assert (trained_run / "metrics.json").read_bytes() == before


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> Path:
    """A folder of real digit PNGs (and one broken file) to predict on."""
    folder = tmp_path_factory.mktemp("images")
    digits = load_digits()
    for index in range(6):
        pixels = (digits.images[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"digit{digits.target[index]}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.mark.slow
def test_eval_prints_and_saves_metrics(trained_run, tmp_path):
    result = invoke("eval", str(trained_run), "digits", "--out", str(tmp_path / "eval"))
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["split"] == "val"
    reference = json.loads((trained_run / "metrics.json").read_text())
    assert saved["top1"] == pytest.approx(reference["val_top1"])
    assert "top-1" in result.output.lower()
    assert (tmp_path / "eval" / "confusion.png").is_file()


@pytest.mark.slow
def test_predict_prints_top_k_writes_csv_and_skips_unreadable(trained_run, digit_images, tmp_path):
    csv_path = tmp_path / "predictions.csv"
    result = invoke(
        "predict",
        str(trained_run / "best.pt"),
        str(digit_images),
        "--top-k",
        "3",
        "--csv",
        str(csv_path),
    )
    assert result.exit_code == 0, result.output
    assert "broken.png" in result.output  # reported as skipped
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert all(r["label1"] in [str(d) for d in range(10)] for r in rows)
    probabilities = [float(rows[0][f"prob{i}"]) for i in (1, 2, 3)]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    correct = sum(r["label1"] == Path(r["path"]).stem[-1] for r in rows)
    assert correct >= 4
