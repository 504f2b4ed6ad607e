"""The recipes of papers 001-004 train end to end on a tiny folder and export to ONNX."""

import json

import pytest
from click.testing import CliRunner

from edgecls.cli import main
from edgecls.config import build_config, load_recipe

pytestmark = pytest.mark.slow

PAPER_RECIPES = {
    "ghostnet_cars": {"model": "ghostnet_100", "optimizer": "adamw", "head_width": 320},
    "resnet56_cifar": {"model": "resnet56_cifar", "mixup": 0.2, "label_smoothing": 0.1},
    "resnet56_cifar_stitch": {"stitch_mixup": "vertical", "mixup": 0.0},
    "assemble_resnet": {"model": "skresnet50d", "anti_alias": "blur", "drop_block": 0.1},
    "bag_of_tricks": {"model": "resnet50d", "zero_gamma": True, "augment": "crop"},
}
TINY = ["input_size=32", "max_epochs=1", "warmup_epochs=0", "batch_size=16", "workers=0"]


@pytest.mark.parametrize("recipe", sorted(PAPER_RECIPES))
def test_a_paper_recipe_trains_and_exports(recipe, digit_folder, tmp_path):
    config = build_config(load_recipe(recipe))
    assert {key: getattr(config, key) for key in PAPER_RECIPES[recipe]} == PAPER_RECIPES[recipe]
    run = tmp_path / recipe
    args = ["train", str(digit_folder), "--recipe", recipe, "--quiet", "--run-dir", str(run)]
    result = CliRunner().invoke(main, [*args, *TINY, "export=onnx"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and 0 <= metrics["val_top1"] <= 1
    (export,) = metrics["exports"]
    assert export["top1_agreement"] >= 0.99 and (run / "export" / "model.onnx").is_file()
