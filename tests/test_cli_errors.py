"""Bad input ends with a one-line message and exit status 2, never a traceback."""

import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.config import build_config, load_recipe, parse_overrides
from edgecls.errors import UserError


def fails_cleanly(*args: str, contains: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output.strip()
    assert message.count("\n") == 0, message
    assert contains in message


def test_missing_path(tmp_path):
    fails_cleanly("train", str(tmp_path / "nowhere"), contains="nowhere")


def test_unknown_builtin_name():
    fails_cleanly("train", "imagenet-tiny", contains="imagenet-tiny")


def test_unknown_config_key_suggests_the_right_one():
    fails_cleanly("train", "digits", "learning_rat=0.1", contains="unknown config key")
    result = CliRunner().invoke(main, ["train", "digits", "max_epoch=3"])
    assert "max_epochs" in result.output


def test_bad_value_type():
    fails_cleanly("train", "digits", "lr=fast", contains="'lr'")
    fails_cleanly("train", "digits", "max_epochs=2.5", contains="'max_epochs'")
    fails_cleanly("train", "digits", "schedule=linear", contains="'schedule'")


def test_unknown_recipe_and_bad_recipe_file(tmp_path):
    fails_cleanly("train", "--recipe", "nosuch", contains="unknown recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2]\n")
    fails_cleanly("train", "--recipe", str(bad), contains="'lr'")


def test_unknown_timm_model(tmp_path):
    fails_cleanly(
        "train",
        "digits",
        "--model",
        "mobilenetv9_huge",
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
        contains="unknown timm model",
    )


def test_missing_weights_file(tmp_path):
    fails_cleanly(
        "train",
        "digits",
        "--weights",
        str(tmp_path / "none.pth"),
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
        contains="weights file not found",
    )


def test_pretrained_weights_offline_give_a_clear_message(tmp_path):
    # A fresh process, so the hub client reads the offline setting at import.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecls",
            "train",
            "digits",
            "--model",
            "mobilenetv3_large_100",
            "--pretrained",
            "--quiet",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "pretrained weights" in result.stderr and "weights=FILE" in result.stderr
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint(tmp_path):
    fails_cleanly("train", "--resume", str(tmp_path), contains="nothing to resume")


def test_eval_and_predict_on_a_missing_or_corrupt_checkpoint(tmp_path):
    fails_cleanly("eval", str(tmp_path / "none.pt"), "digits", contains="no checkpoint")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    fails_cleanly("predict", str(corrupt), str(tmp_path), contains="cannot read checkpoint")


def test_config_layers_and_typing():
    config = build_config(load_recipe("digits"), parse_overrides(["lr=0.1", "max_epochs=7"]))
    assert config.model == "mobilenetv3_small_100" and config.input_size == 32
    assert config.lr == 0.1 and config.max_epochs == 7
    assert build_config({"lr": 1}).lr == 1.0  # an int is a fine float
    with pytest.raises(UserError, match="expects bool"):
        build_config({"grayscale": "maybe"})
    with pytest.raises(UserError, match="val_fraction"):
        build_config({"val_fraction": 1.5})


def test_every_shipped_recipe_is_valid():
    from edgecls.config import recipe_names

    for name in recipe_names():
        build_config(load_recipe(name))


def test_user_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.02}))
    assert build_config(load_recipe(str(path))).lr == 0.02


def test_check_data_reports_splits_balance_and_problems(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 3), ("val", 1)):
        for name in ("cat", "dog"):
            folder = tmp_path / "pets" / split / name
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.new("RGB", (20, 20), (index * 40, 0, 0)).save(folder / f"{index}.png")
    (tmp_path / "pets" / "train" / "dog" / "broken.jpg").write_bytes(b"")
    result = CliRunner().invoke(main, ["check-data", str(tmp_path / "pets")])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output
    assert "train" in result.output and "val" in result.output
    assert "cat" in result.output and "dog" in result.output
    (tmp_path / "pets" / "val" / "bird").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "pets" / "val" / "bird" / "0.png")
    result = CliRunner().invoke(main, ["check-data", str(tmp_path / "pets")])
    assert result.exit_code == 2
    assert "bird" in result.output
