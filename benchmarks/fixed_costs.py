"""The time a run spends outside its training loop, this checkout against another one (an
earlier commit's worktree), alternating, on the same 20,000-image folder.

    git worktree add /tmp/before COMMIT
    python benchmarks/fixed_costs.py --before /tmp/before      # about 5 minutes on 2 CPU cores

Each run: `edgecls train FOLDER model=mobilenetv3_small_100 pretrained=false input_size=32
batch_size=128 optimizer=sgd schedule=cosine max_epochs=1 lr=0.05` as a fresh process timed
from outside, with an empty image cache; this checkout's then runs again on the same cache (what
the first decoded is mapped). Outside the loop = wall - metrics.json's train_seconds (the epoch,
its validation included), so both commits are measured alike; phase_seconds where there is one.
The folder is Fashion-MNIST's 1,000 training images per class and its 10,000 test images as
val/, written as PNGs (as benchmarks/ceiling.py's small-grey row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from auto_plan import FASHION, per_class, read_idx, write_folder

HERE = Path(__file__).resolve().parents[1]
SETTINGS = (
    "model=mobilenetv3_small_100 pretrained=false input_size=32 batch_size=128 optimizer=sgd "
    "schedule=cosine max_epochs=1 lr=0.05"
).split()


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x, y = (
        read_idx(FASHION / "train-images-idx3-ubyte.gz"),
        read_idx(FASHION / "train-labels-idx1-ubyte.gz"),
    )
    keep = per_class(y, 1000, rng)
    write_folder(root / "train", x[keep], y[keep])
    tx, ty = (
        read_idx(FASHION / "t10k-images-idx3-ubyte.gz"),
        read_idx(FASHION / "t10k-labels-idx1-ubyte.gz"),
    )
    write_folder(root / "val", tx, ty)
    return root


def run(checkout: Path, data: Path, run_dir: Path, cache: Path) -> dict:
    env = {**os.environ, "EDGECLS_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "edgecls", "train", str(data), "--run-dir", str(run_dir)]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--quiet", *SETTINGS], cwd=checkout, env=env, capture_output=True, text=True
    )
    wall = time.monotonic() - started
    if result.returncode:
        raise SystemExit(f"edgecls failed in {checkout}: {result.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "wall": wall,
        "outside": wall - metrics["train_seconds"],
        "phases": metrics.get("phase_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_folder(work / "data")
        rows = []
        for round_ in range(args.rounds):
            for name, checkout in (("before", args.before.resolve()), ("this", HERE)):
                cache = work / f"cache-{name}-{round_}"
                first = run(checkout, data, work / f"run-{name}-{round_}", cache)
                rows.append((name, "first run", first))
                if name == "this":
                    again = run(checkout, data, work / f"again-{round_}", cache)
                    rows.append((name, "same data again", again))
        print("| checkout | run | wall s | outside the loop s | phase_seconds |")
        print("|---|---|---|---|---|")
        for name, kind, row in rows:
            phases = json.dumps(row["phases"]) if row["phases"] else "-"
            print(f"| {name} | {kind} | {row['wall']:.1f} | {row['outside']:.1f} | {phases} |")


if __name__ == "__main__":
    main()
