"""Budgeted runs end within their budget: `edgecls train FOLDER time_budget=B` as a user types
it, timed from the command's start to its exit, for a few budgets on a folder of real digit PNGs.

    python benchmarks/budget.py                      # 25 s and 60 s budgets, about 2 minutes
    python benchmarks/budget.py --budgets 25 60 300

The test suite checks what the plan decides with its timings injected (tests/test_plan.py); the
wall time itself depends on the machine, so it is measured here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digit_folder(root: Path, per_class: int) -> Path:
    digits = load_digits()
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for index, pixels in enumerate(digits.images[digits.target == label][:per_class]):
            Image.fromarray((pixels * 255 / 16).astype(np.uint8)).save(folder / f"{index}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[25, 60])
    parser.add_argument("--per-class", type=int, default=60)
    args = parser.parse_args()
    print("| budget s | wall s | wall / budget | val top-1 % | model |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        data = digit_folder(Path(scratch) / "data", args.per_class)
        for budget in args.budgets:
            run = Path(scratch) / f"run-{budget:g}"
            command = [sys.executable, "-m", "edgecls", "train", str(data), "--quiet"]
            started = time.monotonic()
            done = subprocess.run(
                [*command, "--run-dir", str(run), f"time_budget={budget:g}s"],
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - started
            if done.returncode != 0:
                print(f"| {budget:g} | {wall:.1f} | failed: {done.stderr.strip()[-200:]} | | |")
                continue
            metrics = json.loads((run / "metrics.json").read_text())
            model = json.loads((run / "plan.json").read_text())["values"]["model"]
            print(
                f"| {budget:g} | {wall:.1f} | {wall / budget:.2f} | "
                f"{100 * metrics['val_top1']:.2f} | {model} |"
            )


if __name__ == "__main__":
    main()
