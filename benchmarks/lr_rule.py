"""Does the LR range test pick the learning rate where training does best? (issue 26)

    python benchmarks/lr_rule.py                     # about 40 minutes on 2 CPU cores
    python benchmarks/lr_rule.py --datasets digits --epochs 3

For each dataset (folders written as in benchmarks/auto_plan.py: digits, mnist5k and the seeded
1,000-per-class Fashion-MNIST subset), the plan's config for `edgecls train DATA` (model, input
size, batch size, augmentation), then:

- the LR range test's curve as `edgecls lr-find DATA` runs it (one epoch of fine-tuning at the
  range's low end, then an exponential sweep of 100 batches), and the LR each rule reads off it:
  the valley rule before issue 26 (the geometric middle of the longest decreasing run, from its
  first point), fastai's valley, the steepest descent, a tenth of the minimum, and the rule
  edgecls uses now (`edgecls.training.lr_search.suggested_lr`);
- a grid of short real runs (`--epochs` each, one warmup epoch then cosine decay to 0, the same
  seed) at half-decade LRs, and their best validation top-1.

It prints each rule's LR and the top-1 of the grid point nearest to it (in log LR), beside the
best grid point, and writes the table to benchmarks/results/lr_rule.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from auto_plan import make_tasks

from edgecls import api
from edgecls.data import load_configured_dataset
from edgecls.training.loop import Diverged, Trainer
from edgecls.training.lr_search import (
    lr_range_for,
    lr_range_test,
    suggested_lr,
    trial_config,
)

RESULTS = Path(__file__).parent / "results" / "lr_rule.md"
GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def longest_fall(losses: list[float]) -> tuple[int, int]:
    """(first, last) index of the longest strictly decreasing subsequence."""
    n = len(losses)
    length, previous = [1] * n, [-1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], previous[i] = length[j] + 1, j
    end = start = int(np.argmax(length))
    while previous[start] >= 0:
        start = previous[start]
    return start, end


def old_valley(lrs: list[float], losses: list[float]) -> float:
    start, end = longest_fall(losses)
    return math.sqrt(lrs[start] * lrs[end])


def fastai_valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's `valley`: the fall's length counted back from its end, then half way (its
    index start + sections + sections / 2, sections a third of the span)."""
    n = len(losses)
    length = [1] * n
    for i in range(1, n):
        length[i] = max([length[j] + 1 for j in range(i) if losses[j] > losses[i]], default=1)
    end = int(np.argmax(length))
    first = end - length[end]
    sections = (end - first) / 3
    return lrs[max(0, first + int(sections) + int(sections / 2))]


def steepest(lrs: list[float], losses: list[float]) -> float:
    slopes = np.gradient(np.asarray(losses), np.log(lrs))
    return lrs[int(np.argmin(slopes))]


def tenth_of_minimum(lrs: list[float], losses: list[float]) -> float:
    return lrs[int(np.argmin(losses))] / 10


RULES = {
    "before (valley from first point)": old_valley,
    "fastai valley": fastai_valley,
    "steepest descent": steepest,
    "minimum / 10": tenth_of_minimum,
    "edgecls now (suggested_lr)": suggested_lr,
}


def short_run(config, dataset, lr: float, epochs: int) -> float:
    run = dataclasses.replace(
        trial_config(config, lr), schedule="cosine", warmup_epochs=1, max_epochs=epochs
    )
    try:
        return Trainer(run, dataset).fit().best_top1
    except Diverged:
        return 0.0


def nearest(lr: float, grid: dict[float, float]) -> float:
    return grid[min(grid, key=lambda point: abs(math.log(point / lr)))]


def bench(name: str, folder: Path, epochs: int) -> list[str]:
    config, _ = api._configure(str(folder), None, {"time_budget": "10m"})
    config = dataclasses.replace(config, time_budget=None, audit="off")
    dataset = load_configured_dataset(config, progress=False)
    low, _ = lr_range_for(config)
    started = time.perf_counter()
    _, curve = lr_range_test(Trainer(trial_config(config, low), dataset), finetune_lr=low)
    range_seconds = time.perf_counter() - started
    grid = {}
    started = time.perf_counter()
    for lr in GRID:
        grid[lr] = short_run(config, dataset, lr, epochs)
        print(f"  {name}: lr {lr:g}: top-1 {grid[lr]:.2%}", flush=True)
    grid_seconds = time.perf_counter() - started
    best = max(grid, key=grid.get)
    weights = "ImageNet" if config.pretrained else "scratch"
    setup = f"{config.model} {weights} {config.input_size} px"
    rows = [
        f"| {name} | {setup} | best grid | {best:g} | {grid[best]:.2%} |",
        *[
            f"| {name} | {setup} | {rule} | {(lr := pick(curve['lr'], curve['loss'])):.2g} "
            f"| {nearest(lr, grid):.2%} |"
            for rule, pick in RULES.items()
        ],
    ]
    grid_text = ", ".join(f"{lr:g}: {top1:.1%}" for lr, top1 in grid.items())
    note = (
        f"- {name}: grid ({epochs} epochs each, {grid_seconds:.0f} s) {grid_text}; "
        f"range test {range_seconds:.0f} s, its curve's minimum at "
        f"{curve['lr'][int(np.argmin(curve['loss']))]:.2g}"
    )
    return rows + [note]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k,fashion-mnist")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each grid run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    header = [
        f"`python benchmarks/lr_rule.py --epochs {args.epochs}` at commit {commit}:",
        "",
        "| data | planned model | rule | LR | top-1 of the nearest grid run |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.datasets.split(","):
            label, data = make_tasks(name, Path(folder), args.seed)[0]
            *table, note = bench(label, data, args.epochs)
            rows += table
            notes.append(note)
            print("\n".join(table), "\n" + note, flush=True)
    RESULTS.write_text("\n".join([*header, *rows, "", *notes]) + "\n")


if __name__ == "__main__":
    main()
