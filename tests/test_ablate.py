"""`edgecls ablate`: rows that add (or leave out) one trick at a time, the table, its files."""

import csv
import shutil

import pytest
import yaml
from click.testing import CliRunner

from edgecls.ablate import parse_stack, plan_rows
from edgecls.cli import main
from edgecls.errors import UserError

TINY = ["input_size=16", "max_epochs=1", "warmup_epochs=0", "batch_size=16", "workers=0"]


def test_cumulative_and_leave_one_out_rows():
    tricks = parse_stack("label_smoothing,mixup=0.4,ema")
    cumulative = plan_rows(tricks, leave_one_out=False, recipe="r")
    assert [row.label for row in cumulative] == ["r", "+ label_smoothing", "+ mixup=0.4", "+ ema"]
    assert cumulative[2].changes == {"label_smoothing": 0.1, "mixup": 0.4}
    assert cumulative[3].changes == {"label_smoothing": 0.1, "mixup": 0.4, "ema": 0.999}
    out = plan_rows(tricks, leave_one_out=True, recipe="r")
    assert [row.label for row in out] == ["r + all", "- label_smoothing", "- mixup=0.4", "- ema"]
    assert out[2].changes == {"label_smoothing": 0.1, "ema": 0.999}
    for bad, message in [("warmup_epochs", "needs a value"), ("input_size=8", "changes the data")]:
        with pytest.raises(UserError, match=message):
            parse_stack(bad)


@pytest.mark.slow
def test_ablate_trains_each_row_and_writes_the_table(digit_folder, tmp_path):
    out = tmp_path / "ablation"
    args = ["ablate", str(digit_folder), "--recipe", "digits", "--stack", "label_smoothing,mixup"]
    result = CliRunner().invoke(main, [*args, *TINY, "--seeds", "2", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "ablation.csv") as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows] == ["row", "digits", "+ label_smoothing", "+ mixup"]
    assert rows[1][3] == "" and rows[2][3].startswith(("+", "-"))  # delta to the row before
    assert (out / "ablation.png").stat().st_size > 0 and "| + mixup |" in result.output
    last = yaml.safe_load((out / "02-seed1" / "config.yaml").read_text())
    assert (last["label_smoothing"], last["mixup"], last["seed"]) == (0.1, 0.2, 1)
    first = yaml.safe_load((out / "00-seed0" / "config.yaml").read_text())
    assert (first["label_smoothing"], first["mixup"]) == (0.0, 0.0)


@pytest.mark.slow
def test_ablate_without_a_recipe_adds_the_tricks_to_the_plan_and_scores_the_test_split(
    digit_folder, tmp_path
):
    data = tmp_path / "data"
    for image in digit_folder.rglob("*.png"):
        target = data / ("test" if int(image.stem) >= 9 else "train") / image.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target / image.name)
    out = tmp_path / "ablation"
    args = ["ablate", str(data), "--stack", "mixup", "time_budget=1m", "max_epochs=1"]
    args += ["model=resnet20_cifar", "input_size=16", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with open(out / "ablation.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][-2:] == ["test top-1 %", "test delta"]
    assert [row[0] for row in rows[1:]] == ["plan", "+ mixup"]
    assert 0 <= float(rows[2][-2]) <= 100 and rows[2][-1].startswith(("+", "-"))
    planned = yaml.safe_load((out / "00-seed0" / "config.yaml").read_text())
    assert (planned["recipe"], planned["time_budget"], planned["mixup"]) == ("plan", "1m", 0.0)
    assert planned["grayscale"] is True  # the plan's choice for grey digits, not a default
    mixed = yaml.safe_load((out / "01-seed0" / "config.yaml").read_text())
    assert mixed["mixup"] == 0.2
    assert {k: v for k, v in mixed.items() if k not in ("mixup", "seed")} == {
        k: v for k, v in planned.items() if k not in ("mixup", "seed")
    }
