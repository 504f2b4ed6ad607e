"""A command imports what it uses: torch and timm take seconds to import, and `--help`,
`check-data` and `predict` on an exported model do not need them (issue: every run at the
machine's ceiling). Each command runs in a fresh interpreter that lists, as it exits, which of
the heavy modules were imported."""

import json
import subprocess
import sys

import pytest

HEAVY = (
    *("torch", "torchvision", "timm", "edgecls.training", "edgecls.models", "onnx", "optuna"),
    "matplotlib",  # 0.4 s, for commands that draw nothing
)
PROBE = """
import atexit, json, sys
heavy = {heavy!r}
atexit.register(lambda: print(json.dumps([m for m in heavy if m in sys.modules]), file=sys.stderr))
sys.argv = ["edgecls", *{arguments!r}]
from edgecls.cli import main
main()
"""


def imported(*arguments: str) -> tuple[int, list[str]]:
    """The command's exit status and the heavy modules it imported."""
    code = PROBE.format(heavy=HEAVY, arguments=list(arguments))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result.returncode, json.loads(result.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("arguments", [["--help"], ["train", "--help"], ["check-data", "--help"]])
def test_help_imports_neither_torch_nor_timm(arguments):
    assert imported(*arguments) == (0, [])


def test_check_data_imports_neither_torch_nor_timm(digit_folder, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert imported("check-data", str(digit_folder)) == (0, [])
    assert imported("check-data", "digits") == (0, [])
    status, modules = imported("check-data", str(tmp_path))  # no classes: refused, still light
    assert status == 2 and modules == []


def test_predict_on_an_onnx_model_imports_no_torch_and_no_training_code(digits_run, digit_folder):
    image = next(digit_folder.glob("3/*.png"))
    status, modules = imported("predict", str(digits_run / "export" / "model.onnx"), str(image))
    assert status == 0 and modules == []
