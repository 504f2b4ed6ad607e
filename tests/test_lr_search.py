"""Initial-LR estimation: range test, TPE with a resumable storage, grid; and the full recipe."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.config import build_config
from edgecls.data import Dataset, load_dataset
from edgecls.training.loop import Trainer
from edgecls.training.lr_search import lr_grid, lr_range_test, search_lr, suggested_lr

SMALL = {
    "model": "mobilenetv3_small_050",
    "input_size": 16,
    "grayscale": True,
    "hflip": False,
    "batch_size": 32,
    "lr_search_epochs": 1,
}


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    keep = np.arange(320)
    return dataclasses.replace(
        dataset, train=dataset.train.subset(keep), val=dataset.val.subset(keep[:100])
    )


def test_the_range_test_suggests_a_tenth_of_the_lr_at_the_lowest_loss():
    """A smoothed range-test curve: flat and noisy, a long fall, the lowest loss at 0.3, then
    divergence. The old rule (the middle of the longest falling stretch counted from its first
    point) read about 0.002 off such a curve; training does best near a tenth of the lowest."""
    lrs = list(np.logspace(-5, 1, 100))
    lowest = int(np.searchsorted(lrs, 0.3))
    rng = np.random.default_rng(0)
    losses = [2.3 + 0.02 * rng.random() for _ in range(30)]  # nothing learnt yet
    losses += list(np.linspace(2.25, 0.8, lowest - 30))  # the fall
    losses += list(np.linspace(0.75, 6.0, 100 - lowest))  # the lowest loss, then divergence
    assert suggested_lr(lrs, losses) == pytest.approx(lrs[lowest] / 10)
    assert 0.02 <= suggested_lr(lrs, losses) <= 0.05
    assert suggested_lr(lrs, sorted(losses)) == lrs[0]  # rising from the start: the lowest LR


def test_range_test_restores_model_optimizer_and_rng(small_digits):
    config = build_config({**SMALL, "lr": 0.01})
    trainer = Trainer(config, small_digits)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng_before = torch.get_rng_state()
    suggestion, curve = lr_range_test(trainer, finetune_lr=0.005, iterations=30)
    assert 10 <= len(curve["lr"]) <= 30 and curve["lr"] == sorted(curve["lr"])
    assert curve["lr"][0] <= suggestion <= curve["lr"][-1]
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not trainer.optimizer.state_dict()["state"]  # momentum buffers gone again


def test_tpe_search_is_seeded_and_resumes_from_its_storage(small_digits, tmp_path):
    config = build_config(
        {**SMALL, "lr": "tpe", "lr_search_trials": 2, "lr_search_range": [0.005, 0.03]}
    )
    first = search_lr(config, small_digits, tmp_path / "a")
    assert first.method == "tpe" and len(first.trials) == 2
    assert all(0.005 <= t["lr"] <= 0.03 for t in first.trials)
    assert all(round(t["lr"] * 1000, 6).is_integer() for t in first.trials)  # step 0.001
    assert (tmp_path / "a" / "lr_search.db").is_file()

    again = search_lr(dataclasses.replace(config, lr_search_trials=3), small_digits, tmp_path / "a")
    assert len(again.trials) == 3
    assert [t["lr"] for t in again.trials[:2]] == [t["lr"] for t in first.trials]
    assert [t["number"] for t in again.trials] == [0, 1, 2]

    elsewhere = search_lr(config, small_digits, tmp_path / "b")
    assert [t["lr"] for t in elsewhere.trials] == [t["lr"] for t in first.trials]
    assert first.lr == max(first.trials, key=lambda t: t["top1"])["lr"]


def test_grid_search_covers_a_uniform_grid(small_digits, tmp_path):
    config = build_config(
        {**SMALL, "lr": "grid", "lr_search_trials": 3, "lr_search_range": [0.01, 0.03]}
    )
    assert lr_grid(config) == pytest.approx([0.01, 0.02, 0.03])
    result = search_lr(config, small_digits, tmp_path)
    assert sorted(t["lr"] for t in result.trials) == pytest.approx([0.01, 0.02, 0.03])
    assert result.lr in [t["lr"] for t in result.trials]


def test_lr_find_command_saves_the_plot(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "lr-find",
            "digits",
            "--out",
            str(tmp_path),
            "--quiet",
            *[f"{k}={v}" for k, v in SMALL.items()],
        ],
    )
    assert result.exit_code == 0, result.output
    # no recipe: the range test runs on what `edgecls train digits` would train (the plan's
    # choices where SMALL is silent: grey input, its batch size)
    assert "lr-find for the planned run: mobilenetv3_small_050" in result.output
    assert "at 16 px, batch 32" in result.output
    assert "suggested lr" in result.output
    assert (tmp_path / "lr_range_test.png").is_file()
    saved = json.loads((tmp_path / "lr_search.json").read_text())
    assert saved["method"] == "range" and saved["lr"] > 0


@pytest.mark.slow
def test_the_whole_mobilenetv3_recipe_runs_end_to_end(digit_folder, tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(digit_folder),
            "--recipe",
            "mobilenetv3_large_100",
            "--quiet",
            "--run-dir",
            str(run_dir),
            "pretrained=false",
            "input_size=32",
            "max_epochs=3",
            "warmup_epochs=1",
            "lr_search_trials=2",
            "lr_search_epochs=1",
            "batch_size=16",
            "workers=0",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["lr_search"]["method"] == "tpe" and metrics["lr_search"]["trials"] == 2
    assert 0.005 <= metrics["lr"] <= 0.03 and metrics["lr_search"]["seconds"] > 0
    assert (run_dir / "lr_search.db").is_file() and (run_dir / "lr_search.json").is_file()
    assert metrics["epochs_trained"] == 3
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert len(checkpoint["partners"]) == 1  # the AM-Softmax slow student
    assert checkpoint["config"]["sam"] and checkpoint["config"]["augment"] == "augmix"
    assert checkpoint["config"]["lr"] == metrics["lr"]  # the resolved LR is saved
