"""Class imbalance: `balance=none`, `sampler` and `weights` on a 1:20 imbalanced Fashion-MNIST
subset, scored on the full balanced 10,000-image test set (top-1 and balanced accuracy).

    python benchmarks/imbalance.py          # about 5 minutes on 2 CPU cores

Five classes keep `--common` training images each and five only `--common / 20`; the same fixed
recipe (`digits`: MobileNetV3-small from scratch at 32x32) trains each setting for `--epochs`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from auto_plan import FASHION, read_idx, write_folder

RESULTS = Path(__file__).parent / "results" / "imbalance.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--common", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rare = args.common // 20
    rng = np.random.default_rng(args.seed)
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    counts = [args.common if c < 5 else rare for c in range(10)]
    keep = np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(y == c), n, replace=False) for c, n in enumerate(counts)]
        )
    )
    lines = [
        f"Fashion-MNIST with classes 0-4 at {args.common} training images and 5-9 at {rare} "
        f"(1:20), `--recipe digits` for {args.epochs} epochs, scored on the balanced "
        "10,000-image test set:",
        "",
        "| balance | test top-1 % | test balanced accuracy % | rare classes' mean recall % |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "imbalanced"
        write_folder(data / "train", x[keep], y[keep])
        write_folder(data / "test", read_idx(FASHION / "t10k-images-idx3-ubyte.gz"),
                     read_idx(FASHION / "t10k-labels-idx1-ubyte.gz"))  # fmt: skip
        for balance in ("none", "sampler", "weights"):
            run = Path(folder) / balance
            command = [
                sys.executable, "-m", "edgecls", "train", str(data), "--recipe", "digits",
                "--quiet", "--run-dir", str(run), f"max_epochs={args.epochs}",
                f"balance={balance}", "export=null",
            ]  # fmt: skip
            if subprocess.run(command).returncode:
                raise SystemExit(f"training with balance={balance} failed")
            test = json.loads((run / "metrics.json").read_text())["test"]
            rare_recall = np.mean(
                [row["recall"] for row in test["per_class"] if int(row["class"][-1]) >= 5]
            )
            lines.append(
                f"| {balance} | {100 * test['top1']:.2f} | {100 * test['balanced_accuracy']:.2f} "
                f"| {100 * rare_recall:.2f} |"
            )
            print(lines[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
