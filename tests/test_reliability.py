"""Reliability: no code runs from a checkpoint, divergence is survived, one run per folder,
nothing stale, run folders are never classes, writes are atomic, storage secrets stay secret."""

import dataclasses
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecls import runs
from edgecls.cli import main
from edgecls.config import build_config, load_recipe
from edgecls.data import load_dataset
from edgecls.redact import redact
from edgecls.training.loop import Trainer
from edgecls.training.lr_search import search_lr, study_name

TINY = ["--recipe", "digits", "--quiet", "input_size=16"]
SMALL = {
    "model": "mobilenetv3_small_050",
    "input_size": 16,
    "grayscale": True,
    "hflip": False,
    "batch_size": 32,
}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails_cleanly(result, contains: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and contains in errors[0], result.output
    return errors[0]


@pytest.fixture(scope="module")
def small_digits():
    dataset = load_dataset("digits", input_size=16, grayscale=True, progress=False)
    keep = np.arange(320)
    return dataclasses.replace(
        dataset, train=dataset.train.subset(keep), val=dataset.val.subset(keep[:100])
    )


# --- checkpoints are data, never code ---------------------------------------------------------


class Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_no_command_runs_code_from_a_crafted_checkpoint(tmp_path, digit_folder):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    torch.save({"model": Payload(marker), "classes": ["a", "b"]}, crafted)
    torch.load(crafted, weights_only=False)  # the payload works when unpickled blindly...
    assert marker.exists()
    marker.unlink()

    run = tmp_path / "run"
    run.mkdir()
    runs.write_config(run, build_config(load_recipe("digits"), {"data": str(digit_folder)}))
    (run / "last.pt").write_bytes(crafted.read_bytes())
    image = next(digit_folder.glob("*/*.png"))
    commands = [
        ("eval", crafted, digit_folder),
        ("predict", crafted, image),
        ("export", crafted, "--format", "onnx"),
        ("bench", crafted, "--repeats", "1", "--warmup", "0"),
        ("train", "--resume", run, "--quiet"),
    ]
    for command in commands:
        fails_cleanly(invoke(*command), contains="refusing to load")
        assert not marker.exists(), command


# --- divergence --------------------------------------------------------------------------------


def test_a_non_finite_loss_skips_the_update(small_digits):
    trainer = Trainer(build_config(SMALL), small_digits)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    images = torch.full((8, 1, 16, 16), float("nan"))
    assert np.isnan(trainer.step(images, torch.zeros(8, dtype=torch.int64)))
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def train_small_at_lr_10(run: Path, *settings: str):
    """lr=10 diverges at once on the small model; lr=1 within an epoch or two; lr=0.1 trains."""
    small = [f"{k}={v}" for k, v in SMALL.items()]
    arguments = ["--recipe", "digits", "--run-dir", run, "--quiet", "lr=10", "warmup_epochs=0"]
    return invoke("train", "digits", *arguments, *small, *settings)


@pytest.mark.slow
def test_divergence_rolls_back_at_a_lower_lr_and_is_recorded(tmp_path):
    run = tmp_path / "run"
    result = train_small_at_lr_10(run, "max_epochs=3")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    scales = [r["lr_scale"] for r in metrics["rollbacks"]]
    assert scales and scales == pytest.approx([0.1**i for i in range(1, len(scales) + 1)])
    history = runs.read_history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["rollbacks"] == len(scales)
    assert history[-1]["lr"] == pytest.approx(10 * scales[-1])  # the LR really used
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert "rollback at epoch" in result.output


def test_a_run_that_keeps_diverging_stops_with_one_line(tmp_path):
    result = train_small_at_lr_10(tmp_path / "run", "max_rollbacks=1")
    message = fails_cleanly(result, contains="diverged")
    assert "after 1 rollback" in message and "lower lr" in message


def test_non_finite_validation_never_improves(small_digits):
    trainer = Trainer(build_config(SMALL, {"max_epochs": 1}), small_digits)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.fill_(float("nan"))
    metrics = trainer.evaluate(small_digits.val)
    assert metrics.top1 == 0.0 and metrics.top5 == 0.0 and metrics.map == pytest.approx(0.1)
    assert not np.isfinite(metrics.loss)


def test_a_diverging_lr_search_trial_is_pruned_not_fatal(small_digits, tmp_path):
    config = build_config(
        SMALL,
        {
            "lr": "grid",
            "lr_search_range": [0.01, 10.0],
            "lr_search_step": 0.01,
            "lr_search_trials": 2,
            "lr_search_epochs": 1,
        },
    )
    result = search_lr(config, small_digits, tmp_path, progress=False)
    states = {t["lr"]: t["state"] for t in result.trials}
    assert states == {0.01: "complete", 10.0: "pruned"}
    assert result.lr == 0.01

    hopeless = dataclasses.replace(config, lr_search_range=[5.0, 10.0])
    with pytest.raises(Exception, match="every LR-search trial .* diverged"):
        search_lr(hopeless, small_digits, tmp_path / "hopeless", progress=False)


@pytest.mark.slow
def test_resume_accepts_safe_overrides_and_records_them(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", *TINY, "--epochs", "2", "--run-dir", run).exit_code == 0
    fails_cleanly(invoke("train", "--resume", run, "model=resnet18"), contains="cannot change")
    result = invoke("train", "--resume", run, "--quiet", "lr=1e-3", "max_epochs=3")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == 0.001 and saved["max_epochs"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumes"] == [{"epoch": 2, "overrides": {"lr": 0.001, "max_epochs": 3}}]
    history = runs.read_history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    # The digits recipe's warmup would put epoch 3 at its full LR of 0.05: now 1e-3.
    assert history[2]["lr"] == pytest.approx(0.001)


# --- one run per folder, nothing stale ---------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_fails_naming_the_first(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "edgecls", "train", *TINY, "--epochs", "50", "--run-dir", run],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (run / "history.csv").is_file() and time.time() < deadline:
            time.sleep(0.1)
        for second in (
            invoke("train", *TINY, "--run-dir", run, "--overwrite"),
            invoke("train", "--resume", run),
        ):
            fails_cleanly(second, contains=f"in use by process {first.pid}")
    finally:
        first.kill()
        first.wait()
    assert (run / "config.yaml").is_file()


@pytest.mark.slow
def test_overwrite_starts_from_an_empty_folder(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", *TINY, "--epochs", "1", "--run-dir", run).exit_code == 0
    for stale in ("lr_search.db", "skipped_files.txt", "lr_range_test.png"):
        (run / stale).write_text("stale")
    (run / "last.pt").write_bytes(b"stale")
    result = invoke("train", *TINY, "--epochs", "1", "--run-dir", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not any((run / name).exists() for name in ("lr_search.db", "skipped_files.txt"))
    assert not (run / "lr_range_test.png").exists()
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 1


def test_overwrite_never_empties_a_folder_that_is_not_a_run(tmp_path, digit_folder):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    fails_cleanly(
        invoke("train", *TINY, "--run-dir", keep, "--overwrite"), contains="refusing to empty"
    )
    assert (keep / "notes.txt").read_text() == "precious"


def test_run_folders_are_created_atomically_with_unique_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = build_config({"data": "digits"})
    with runs.claim_run_dir(None, config) as first, runs.claim_run_dir(None, config) as second:
        assert first != second and first.is_dir() and second.is_dir()
        assert first.parent == second.parent == Path("runs")


def test_a_run_that_fails_before_writing_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails_cleanly(invoke("train", "digits", "--model", "nosuchnet"), contains="unknown timm")
    assert not (tmp_path / "runs").exists()


# --- run folders are never classes; resume checks the classes -----------------------------------


def _copy_tree(source: Path, target: Path) -> Path:
    for file in source.rglob("*.png"):
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(file.read_bytes())
    return target


@pytest.mark.slow
def test_run_folders_inside_the_data_are_not_classes(tmp_path, digit_folder, monkeypatch):
    data = _copy_tree(digit_folder, tmp_path / "data")
    monkeypatch.chdir(data)
    assert invoke("train", ".", *TINY, "--epochs", "1").exit_code == 0
    assert (data / "runs").is_dir()
    dataset = load_dataset(str(data), input_size=16, grayscale=True, progress=False)
    assert dataset.classes == [str(d) for d in range(10)]


@pytest.mark.slow
def test_resume_refuses_data_whose_classes_changed(tmp_path, digit_folder):
    data = _copy_tree(digit_folder, tmp_path / "data")
    run = tmp_path / "run"
    assert invoke("train", data, *TINY, "--epochs", "1", "--run-dir", run).exit_code == 0
    extra = data / "x"
    extra.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(extra / f"{i}.png")
    message = fails_cleanly(invoke("train", "--resume", run), contains="classes differ")
    assert "new: x" in message


@pytest.mark.slow
def test_resume_refuses_images_added_unless_told_to_accept_them(tmp_path, digit_folder):
    data = _copy_tree(digit_folder, tmp_path / "data")
    run = tmp_path / "run"
    assert invoke("train", data, *TINY, "--epochs", "1", "--run-dir", run).exit_code == 0
    for i in range(3):  # the same classes, more images: the validation split is drawn anew
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(data / "3" / f"new{i}.png")
    message = fails_cleanly(invoke("train", "--resume", run), contains="the data changed")
    assert "3 images added" in message and "--accept-changed-data" in message
    accepted = invoke("train", "--resume", run, "--accept-changed-data", "--quiet", "max_epochs=2")
    assert accepted.exit_code == 0, accepted.output
    assert [row["epoch"] for row in runs.read_history(run)] == [1, 2]


# --- atomic writes ------------------------------------------------------------------------------


def test_written_files_follow_the_umask_and_leave_no_temp_files(tmp_path):
    previous = os.umask(0o027)
    try:
        runs.write_text(tmp_path / "a.txt", "x")
        runs.save_checkpoint({"model": {}, "classes": []}, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    for name in ("a.txt", "last.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert not list(tmp_path.glob(".*.tmp"))


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: x\n")
    stale = run / ".last.pt.k2j3.tmp"
    stale.write_bytes(b"half a checkpoint")
    with runs.claim_run_dir(run, build_config({}), resume=True):
        assert not stale.exists()


# --- shared LR-search storages ------------------------------------------------------------------


def test_storage_passwords_are_never_written(tmp_path):
    url = "postgresql://bob:s3cret@db.example:5432/studies"
    config = build_config({"lr_search_storage": url})
    runs.write_config(tmp_path, config)
    assert "s3cret" not in (tmp_path / "config.yaml").read_text()
    assert "bob:***@db.example" in (tmp_path / "config.yaml").read_text()
    assert "s3cret" not in json.dumps(runs.saved_config(config))


def test_study_names_tell_data_model_and_search_apart(small_digits):
    config = build_config(SMALL, {"lr": "tpe"})
    name = study_name(config, small_digits, "tpe")
    assert name == study_name(config, small_digits, "tpe")
    other_data = dataclasses.replace(small_digits, train=small_digits.train.subset(np.arange(50)))
    others = {
        study_name(config, other_data, "tpe"),
        study_name(dataclasses.replace(config, model="mobilenetv3_small_100"), small_digits, "tpe"),
        study_name(dataclasses.replace(config, lr_search_epochs=3), small_digits, "tpe"),
        study_name(config, small_digits, "grid"),
    }
    assert name not in others and len(others) == 4


def test_a_trial_left_running_by_a_killed_process_is_failed_on_resume(small_digits, tmp_path):
    config = build_config(SMALL, {"lr": "tpe", "lr_search_trials": 1, "lr_search_epochs": 1})
    storage = f"sqlite:///{tmp_path / 'lr_search.db'}"
    study = optuna.create_study(
        study_name=study_name(config, small_digits, "tpe"), storage=storage, direction="maximize"
    )
    study.ask()  # a trial that a killed process never finished
    search_lr(config, small_digits, tmp_path, progress=False)
    states = [
        t.state for t in optuna.load_study(study_name=study.study_name, storage=storage).trials
    ]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


PASSWORD_CHARS = st.characters(blacklist_characters="@\n\r", blacklist_categories=("Cs",))
QUERY_CHARS = st.characters(
    blacklist_characters="&;#", blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")
)


@settings(max_examples=200, deadline=None)
@given(password=st.text(PASSWORD_CHARS, min_size=1, max_size=30))
def test_any_password_in_a_storage_url_is_redacted(password):
    url = f"postgresql+psycopg://bob:{password}@db.example:5432/studies"
    assert redact(url) == "postgresql+psycopg://bob:***@db.example:5432/studies"
    assert redact({"a": [url, (1, url)]}) == {"a": [redact(url), (1, redact(url))]}


@settings(max_examples=200, deadline=None)
@given(password=st.text(QUERY_CHARS, min_size=1, max_size=30))
def test_a_password_in_a_query_string_is_redacted(password):
    url = f"postgresql://db.example/studies?user=bob&password={password}&sslmode=require"
    assert redact(url) == "postgresql://db.example/studies?user=bob&password=***&sslmode=require"


def test_a_password_with_a_slash_never_reaches_the_config_or_checkpoints(tmp_path):
    url = "postgresql://bob:s3/cr3t@db.example/studies"
    config = build_config({"lr_search_storage": url})
    runs.write_config(tmp_path, config)
    runs.save_checkpoint(
        {"config": config.to_dict(), "model": {}, "classes": []}, tmp_path / "x.pt"
    )
    runs.write_json(tmp_path / "m.json", {"resumes": [{"overrides": {"s": url}}]})
    for name in ("config.yaml", "x.pt", "m.json"):
        assert b"s3/cr3t" not in (tmp_path / name).read_bytes(), name


@pytest.mark.slow
def test_a_resume_with_a_storage_url_keeps_its_password_out_of_every_file(tmp_path):
    run = tmp_path / "run"
    assert invoke("train", *TINY, "--epochs", "2", "--run-dir", run).exit_code == 0
    url = "postgresql://bob:pa/ss?w0rd@db.example:5432/studies"
    result = invoke("train", "--resume", run, "max_epochs=3", f"lr_search_storage={url}")
    assert result.exit_code == 0, result.output
    assert "pa/ss" not in result.output and "bob:***@db.example" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumes"][0]["overrides"]["lr_search_storage"] == redact(url)
    written = [path for path in run.rglob("*") if path.is_file()]
    assert {"metrics.json", "last.pt", "best.pt", "config.yaml"} <= {p.name for p in written}
    for path in written:
        assert b"pa/ss" not in path.read_bytes(), path
