"""The plan before issue 26 and the plan now, side by side at equal time budgets (issue 26).

    python benchmarks/accuracy_per_minute.py                          # 2, 5 and 15 minutes: ~2.5 h
    python benchmarks/accuracy_per_minute.py --budgets 2m --datasets fashion-mnist

On the folders of benchmarks/auto_plan.py (digits, mnist5k, the seeded 1,000-per-class
Fashion-MNIST subset scored on its 10,000 test images; `--subsets` adds the 200-image ones), each
budget runs `edgecls train DATA time_budget=B` twice in fresh processes, alternating which goes
first: "before" with the settings the plan chose before issue 26 given as the user's (flips for
colour images only, no test-time augmentation, none of the speed runs' tricks, 20% of a folder
without val/ split off for validation; the LR stays the plan's), and "now" with nothing but the
budget. It prints each run's top-1, epochs and wall time, and the validation top-1 of both at the
same epoch (the last epoch both reached: a comparison that does not depend on the machine's speed,
though each run's LR schedule is paced by its own budget).
Writes benchmarks/results/accuracy_per_minute.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from auto_plan import make_tasks

from edgecls import runs

RESULTS = Path(__file__).parent / "results" / "accuracy_per_minute.md"
SHOWN = ("model", "input_size", "lr", "hflip", "tta", "tta_shift", "label_smoothing",
         "progressive_resizing", "whiten_stem", "random_erasing")  # fmt: skip


def before_issue_26(data: Path) -> list[str]:
    """The decisions the plan made before issue 26, as the user's settings."""
    from edgecls.plan.profile import profile_data

    before = [f"hflip={str(not profile_data(str(data)).grayscale).lower()}", "tta=false",
              "tta_shift=0"]  # fmt: skip
    return [*before, "label_smoothing=0", "progressive_resizing=0", "whiten_stem=false",
            "random_erasing=0", "val_fraction=0.2"]  # fmt: skip


def train(data: Path, run_dir: Path, options: list[str]) -> dict:
    started = time.monotonic()
    command = [sys.executable, "-m", "edgecls", "train", str(data), "--run-dir", str(run_dir)]
    result = subprocess.run([*command, "--quiet", *options], capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"edgecls failed on {data}: {result.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    split = "test" if "test_top1" in metrics else "val"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    history = runs.read_history(run_dir)
    return {
        "one_view": one_view_top1(run_dir, data, split)
        if config["tta"] or config["tta_shift"]
        else None,
        "top1": metrics[f"{split}_top1"],
        "split": split,
        "epochs": metrics["epochs_trained"],
        "wall": wall,
        "val_by_epoch": [row["val_top1"] for row in history],
        "settings": {key: config[key] for key in SHOWN},
    }


def one_view_top1(run_dir: Path, data: Path, split: str) -> float:
    """best.pt's top-1 without test-time augmentation: what tta adds."""
    from edgecls.data import load_configured_dataset
    from edgecls.evaluate.inference import predict_logits
    from edgecls.models import model_from_checkpoint

    model, config = model_from_checkpoint(runs.load_checkpoint(run_dir / "best.pt"))
    model.mirror_average, model.shifted_views_by = False, 0
    scored = getattr(load_configured_dataset(config, str(data), progress=False), split)
    logits = predict_logits(model, scored.images)
    return float((logits.argmax(1) == scored.labels).float().mean())


def shown(value: object) -> str:
    """A setting as a person writes it: 0.022, not 0.022000000000000002."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k,fashion-mnist")
    parser.add_argument("--budgets", default="2m,5m,15m")
    parser.add_argument("--subsets", action="store_true", help="also the 200-image subsets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    lines = [
        f"`python benchmarks/accuracy_per_minute.py --datasets {args.datasets} --budgets "
        f"{args.budgets}{' --subsets' if args.subsets else ''}` at commit {commit}, 2-core CPU:",
        "",
        "| data | budget | before: top-1 % (epochs, wall s) | now: top-1 % (epochs, wall s) "
        "| val top-1 % at epoch k: before / now | now's changes | now without tta % |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    flip = False
    with tempfile.TemporaryDirectory() as folder:
        for name in args.datasets.split(","):
            for label, data in make_tasks(name, Path(folder) / "data", args.seed):
                if label.endswith("200") and not args.subsets:
                    continue
                for budget in args.budgets.split(","):
                    out = Path(folder) / "runs" / f"{label.replace(' ', '-')}-{budget}"
                    plans = {
                        "before": [f"time_budget={budget}", *before_issue_26(data)],
                        "now": [f"time_budget={budget}"],
                    }
                    order = ["now", "before"] if flip else ["before", "now"]
                    flip = not flip
                    done = {which: train(data, out / which, plans[which]) for which in order}
                    before, now = done["before"], done["now"]
                    k = min(len(before["val_by_epoch"]), len(now["val_by_epoch"]))
                    one_view = "-" if now["one_view"] is None else f"{100 * now['one_view']:.2f}"
                    changes = ", ".join(
                        f"{key}={shown(now['settings'][key])}"
                        for key in now["settings"]
                        if now["settings"][key] != before["settings"][key]
                    )
                    row = (
                        f"| {label} ({before['split']}) | {budget} "
                        f"| {100 * before['top1']:.2f} ({before['epochs']}, {before['wall']:.0f}) "
                        f"| {100 * now['top1']:.2f} ({now['epochs']}, {now['wall']:.0f}) "
                        f"| {k}: {100 * before['val_by_epoch'][k - 1]:.2f} / "
                        f"{100 * now['val_by_epoch'][k - 1]:.2f} | {changes or 'none'} "
                        f"| {one_view} |"
                    )
                    lines.append(row)
                    print(row, flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
