"""`edgecls ablate`: a recipe with tricks added one at a time (cumulative, as in paper 002's
Table III and paper 004's Table 6) or each left out of the full stack (paper 000's Table 4),
over one or more seeds, as a table in Markdown and CSV and a bar chart.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls import runs
from edgecls.config import Config, build_config, parse_overrides
from edgecls.data import load_configured_dataset
from edgecls.errors import UserError
from edgecls.report.plots import plot_ablation

# The value a trick named without one is switched on at: the papers' own settings.
TRICK_VALUES: dict[str, Any] = {
    "label_smoothing": 0.1,  # 001, 002, 004
    "mixup": 0.2,  # 002, 004
    "cutmix": 1.0,
    "stitch_mixup": "vertical",  # 002, Table V
    "ema": 0.999,
    "sam": True,  # 000
    "mutual": True,  # 000
    "no_bias_decay": True,  # 000, 004
    "zero_gamma": True,  # 004
    "lr_batch_scaling": True,  # 004
    "random_erasing": 0.5,  # 001
    "hsb_jitter": 0.4,  # 004
    "pca_lighting": 0.1,  # 004
    "drop_path": 0.05,
    "drop_block": 0.1,  # 003
    "normalize": "train",  # 001
    "schedule": "cosine",  # 002, 004
    "augment": "augmix",  # 000
    "tta": True,
    "tta_shift": 1 / 32,  # airbench
    "progressive_resizing": 0.75,  # FFCV
    "whiten_stem": True,  # airbench
}
# Keys that change the data itself: one dataset is decoded for every row, so they cannot stack.
DATA_KEYS = ("data", "data_root", "input_size", "grayscale", "val_fraction", "download")


@dataclass
class Row:
    label: str
    changes: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per seed

    def mean(self, key: str) -> float:
        return statistics.fmean(run[key] for run in self.runs)

    def spread(self, key: str) -> float:
        values = [run[key] for run in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0


def parse_stack(text: str) -> list[tuple[str, dict[str, Any]]]:
    """`label_smoothing,mixup=0.4,teacher=runs/big` -> [(label, {key: value})...]."""
    tricks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" in item:
            changes = parse_overrides([item])
        elif item in TRICK_VALUES:
            changes = {item: TRICK_VALUES[item]}
        else:
            known = ", ".join(sorted(TRICK_VALUES))
            raise UserError(f"'{item}' needs a value ({item}=VALUE); bare names: {known}")
        key = next(iter(changes))
        if key in DATA_KEYS:
            raise UserError(f"'{key}' changes the data; set it for every row with {key}=VALUE")
        build_config(changes)  # an unknown key or a bad value fails before anything trains
        tricks.append((item, changes))
    if not tricks:
        raise UserError("--stack names no trick: e.g. --stack label_smoothing,mixup")
    return tricks


def plan_rows(
    tricks: list[tuple[str, dict[str, Any]]], leave_one_out: bool, recipe: str
) -> list[Row]:
    """Cumulative: the recipe, then each trick added to the previous row. Leave-one-out: the
    recipe with every trick, then with each trick taken back out."""
    everything = {k: v for _, changes in tricks for k, v in changes.items()}
    if leave_one_out:
        rows = [Row(f"{recipe} + all", everything)]
        for label, changes in tricks:
            rest = {k: v for k, v in everything.items() if k not in changes}
            rows.append(Row(f"- {label}", rest))
        return rows
    rows, stacked = [Row(recipe, {})], {}
    for label, changes in tricks:
        stacked = {**stacked, **changes}
        rows.append(Row(f"+ {label}", stacked))
    return rows


def ablate(
    base: Config,
    recipe: str,
    tricks: list[tuple[str, dict[str, Any]]],
    out_dir: Path,
    *,
    leave_one_out: bool = False,
    seeds: int = 1,
    progress: bool = True,
) -> list[Row]:
    """Train every row for every seed into `out_dir/<row>-seed<k>/` and write the tables."""
    from edgecls.training import train

    rows = plan_rows(tricks, leave_one_out, recipe)
    dataset = load_configured_dataset(base, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        for seed in range(base.seed, base.seed + seeds):
            config = dataclasses.replace(build_config(base.to_dict(), row.changes), seed=seed)
            run_dir = out_dir / f"{index:02d}-seed{seed}"
            started = time.monotonic()
            metrics = train(config, run_dir, progress=progress, dataset=dataset).metrics
            row.runs.append(
                {
                    "top1": metrics["val_top1"],
                    "test_top1": metrics.get("test_top1"),
                    "top5": metrics["val_top5"],
                    "map": metrics["val_map"],
                    "epochs": metrics["epochs_trained"],
                    "seconds": time.monotonic() - started,
                }
            )
        write_tables(rows[: index + 1], out_dir, recipe, leave_one_out)
    plot_ablation([r.label for r in rows], [100 * r.mean("top1") for r in rows], out_dir)
    return rows


COLUMNS = ("top-1 %", "± (seeds)", "delta", "top-5 %", "mAP", "epochs", "wall s")
TEST_COLUMNS = ("test top-1 %", "test delta")


def has_test(rows: list[Row]) -> bool:
    return all(run["test_top1"] is not None for row in rows for run in row.runs)


def table_cells(rows: list[Row], leave_one_out: bool) -> list[list[str]]:
    """Per row: mean validation top-1 and its spread over seeds, its change from the row before
    (cumulative) or from the full stack (leave-one-out), top-5, mAP, epochs, wall time; and
    where the data has a test split, test top-1 and its change (more images than validation:
    a smaller change is real)."""
    cells = []
    for index, row in enumerate(rows):
        reference = rows[0 if leave_one_out else max(0, index - 1)]
        top1 = row.mean("top1")
        cells.append(
            [
                row.label,
                f"{100 * top1:.2f}",
                f"{100 * row.spread('top1'):.2f}",
                f"{100 * (top1 - reference.mean('top1')):+.2f}" if index else "",
                f"{100 * row.mean('top5'):.2f}",
                f"{row.mean('map'):.4f}",
                f"{row.mean('epochs'):.0f}",
                f"{row.mean('seconds'):.0f}",
            ]
        )
        if has_test(rows):
            test = row.mean("test_top1")
            change = test - reference.mean("test_top1")
            cells[-1] += [f"{100 * test:.2f}", f"{100 * change:+.2f}" if index else ""]
    return cells


def write_tables(rows: list[Row], out_dir: Path, recipe: str, leave_one_out: bool) -> None:
    cells = table_cells(rows, leave_one_out)
    columns = COLUMNS + TEST_COLUMNS * has_test(rows)
    kind = "each trick left out of the full stack" if leave_one_out else "tricks added in order"
    lines = [
        f"`{recipe}`, {kind}; validation split, mean over {len(rows[0].runs)} seed(s).",
        "",
        "| row | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    runs.write_text(out_dir / "ablation.md", "\n".join(lines) + "\n")
    text = io.StringIO()
    csv.writer(text).writerows([["row", *columns], *cells])
    runs.write_text(out_dir / "ablation.csv", text.getvalue())
