"""A run killed with SIGKILL at any moment and resumed ends exactly as an uninterrupted one, for
every ingredient of the shipped recipes (SAM, ASAM, mutual learning, AM-Softmax, AugMix, AMP,
mixup and CutMix, label smoothing, AdamW, a step schedule, early stopping, EMA)."""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HARNESS = Path(__file__).with_name("kill_harness.py")
# Tiny and fast: 32x32, from scratch, 3 epochs, 2 one-epoch LR-search trials, no loader workers.
# The LR changes every epoch (warmup), so a resume that loses track of it shows.
SMALL = [
    "--quiet",
    "pretrained=false",
    "input_size=32",
    "max_epochs=3",
    "warmup_epochs=3",
    "lr_search_trials=2",
    "lr_search_epochs=1",
    "batch_size=16",
    "workers=0",
]
STEPS_PER_EPOCH = 6  # 96 training images of the digit folder in batches of 16
# (recipe, extra settings, where the kill lands): every kind of training state the shipped
# recipes carry (the digits recipe with the tricks of 001-004, and ASAM over its AdamW with AMP's
# scaler, on the ResNet-20 that bf16 speeds up on a CPU; the cosine baseline with the EfficientNet
# recipe's AM-Softmax head; the paper's SAM + mutual learning + AugMix + TPE search) and every
# kind of moment. The MobileNetV3-large and EfficientNet recipes differ from these only in the
# architecture, which resume does not see.
CASES = [
    (
        "digits",
        ["mixup=0.4", "cutmix=1.0", "label_smoothing=0.1", "optimizer=adamw", "lr=0.002"]
        + ["schedule=step", "lr_step_epochs=1", "early_stopping=val_loss", "ema=0.9"]
        + ["sam=true", "sam_adaptive=true", "amp=true", "model=resnet20_cifar"],
        "step",
    ),
    (
        "baseline",
        ["model=mobilenetv3_small_100", "head=am_softmax", "am_margin=0.35"],
        "checkpoint",
    ),
    ("mobilenetv3_small_100", ["max_epochs=1", "warmup_epochs=1"], "trial-step"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def kill_limit(point: str, rng: random.Random) -> int:
    """A random moment inside the run (the training steps, checkpoint writes or trial steps)."""
    if point == "checkpoint":
        return rng.randint(2, 4)  # best.pt or last.pt of the first two epochs
    if point == "trial-step":
        return rng.randint(2, 2 * STEPS_PER_EPOCH - 1)  # inside one of the two trials
    return rng.randint(STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH - 1)  # after a checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "extra", "point"), CASES)
def test_sigkill_and_resume_repeat_the_uninterrupted_run(
    recipe, extra, point, digit_folder, tmp_path
):
    arguments = ["train", str(digit_folder), "--recipe", recipe, *SMALL, *extra]
    full, killed = tmp_path / "full", tmp_path / "killed"
    limit = kill_limit(point, random.Random(f"{recipe}{extra}{point}"))
    # The reference and the run to kill side by side: one core each.
    reference = subprocess.Popen(
        [sys.executable, "-m", "edgecls", *arguments, "--run-dir", str(full)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    victim = subprocess.run(
        [sys.executable, str(HARNESS), point, str(limit), *arguments, "--run-dir", str(killed)],
        env=ENV,
        capture_output=True,
    )
    assert reference.wait() == 0, reference.stderr.read().decode()
    assert victim.returncode == -9, f"not killed at {point} {limit}: {victim.stderr.decode()}"
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "edgecls", "train", "--resume", str(killed), "--quiet"],
        env=ENV,
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert history(killed) == history(full)
    for name in ("best.pt", "last.pt"):
        expected = torch.load(full / name, weights_only=True)
        got = torch.load(killed / name, weights_only=True)
        for key, tensor in expected["model"].items():
            assert torch.equal(tensor, got["model"][key]), f"{name}: {key} differs"
    reference_metrics = json.loads((full / "metrics.json").read_text())
    resumed_metrics = json.loads((killed / "metrics.json").read_text())
    for key in ("lr", "val_top1", "val_map", "best_epoch", "epochs_trained"):
        assert resumed_metrics[key] == reference_metrics[key], key
    assert not list(killed.glob(".*.tmp")), "a killed write's temporary file was left behind"
