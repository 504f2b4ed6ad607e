"""Test-time augmentation measured without training noise: one planned run per dataset, then its
best.pt scored on the test images with each set of views (one view, the mirror, diagonal shifts of
a share of the side, both), so every column is the same weights.

    python benchmarks/tta_views.py                     # about 12 minutes on 2 CPU cores
    python benchmarks/tta_views.py --tasks "digits 200" --seeds 0,1

Tasks are those of benchmarks/auto_plan.py: the Fashion-MNIST 1,000-per-class subset (its full
test set) at --budget, and the 200-image subsets at --small-budget, each trained by a fresh
`python -m edgecls train DATA time_budget=B` process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
from auto_plan import make_tasks, run_edgecls

from edgecls import runs
from edgecls.data import load_configured_dataset
from edgecls.evaluate.inference import predict_logits
from edgecls.models import model_from_checkpoint, shift_pixels, shifted

RESULTS = Path(__file__).parent / "results" / "tta_views.md"
SHARES = (1 / 32, 1 / 16, 1 / 8)


def view_logits(run_dir: Path, data: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of every single view of the test images, by name, and the labels."""
    model, config = model_from_checkpoint(runs.load_checkpoint(run_dir / "best.pt"))
    model.mirror_average, model.shifted_views_by = False, 0
    split = load_configured_dataset(config, str(data), progress=False).test
    side = split.images.shape[-1]
    logits = {}
    for mirror in (False, True):
        images = split.images.flip(-1) if mirror else split.images
        logits[f"{mirror:d}/0"] = predict_logits(model, images)
        for share in SHARES:
            step = shift_pixels(share, side)
            for by in (step, -step):
                moved = shifted(images.float(), by).round().to(torch.uint8)
                logits[f"{mirror:d}/{by}"] = predict_logits(model, moved)
    return logits, split.labels


def top1_by_setting(logits: dict[str, torch.Tensor], labels: torch.Tensor, side: int) -> dict:
    """Test top-1 % of each (mirror, share) setting: the mean of its views' logits."""
    scores = {}
    for mirror in (False, True):
        for share in (0.0, *SHARES):
            step = shift_pixels(share, side)
            names = [f"{m:d}/{by}" for m in range(mirror + 1) for by in {0, step, -step}]
            average = sum(logits[name] for name in names) / len(names)
            scores[mirror, share] = 100 * (average.argmax(1) == labels).float().mean().item()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="fashion-mnist,digits 200,mnist5k 200")
    parser.add_argument("--budget", default="5m", help="time_budget of the Fashion-MNIST subset")
    parser.add_argument("--small-budget", default="2m", help="time_budget of the 200-image ones")
    parser.add_argument("--seeds", default="0", help="one planned run per seed, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    wanted = args.tasks.split(",")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent
    ).stdout.strip()
    settings = [(m, s) for m in (False, True) for s in (0.0, *SHARES)]
    header = " | ".join(
        (f"mirror + shift {s:.4g}" if m else f"shift {s:.4g}") if s else ("mirror" if m else "one")
        for m, s in settings
    )
    lines = [
        f'`python benchmarks/tta_views.py --tasks "{args.tasks}" --seeds {args.seeds}` at '
        f"{commit}: test top-1 % of each run's best.pt with each set of test-time views "
        "(diagonal shifts by a share of the side, edges repeated; the mean of the views' logits), "
        "2-core CPU. Trained with flips: whether the plan turned them on.",
        "",
        f"| data | budget | seed | model, input | flips trained | {header} |",
        "|---|---|---|---|---|" + "---|" * len(settings),
    ]
    gains: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tasks = {}
        for name in {task.split(" ")[0] for task in wanted}:
            for label, data in make_tasks(name, Path(folder) / "data", 0):
                tasks[label] = data
        for label in wanted:
            budget = args.small_budget if label.endswith("200") else args.budget
            for seed in args.seeds.split(","):
                run_dir = Path(folder) / "runs" / f"{label.replace(' ', '-')}-{seed}"
                run = run_edgecls(tasks[label], run_dir, [f"time_budget={budget}", f"seed={seed}"])
                config = runs.load_checkpoint(run_dir / "best.pt")["config"]
                logits, labels = view_logits(run_dir, tasks[label])
                scores = top1_by_setting(logits, labels, run["input"])
                cells = " | ".join(f"{scores[key]:.2f}" for key in settings)
                lines.append(
                    f"| {label} | {budget} | {seed} | {run['model']}, {run['input']} | "
                    f"{'yes' if config['hflip'] else 'no'} | {cells} |"
                )
                print(lines[-1], flush=True)
                for share in SHARES:
                    gains.setdefault(f"shift {share:.4g}", []).append(
                        scores[False, share] - scores[False, 0.0]
                    )
    lines += [
        "",
        "Mean change from one view, over all rows: "
        + ", ".join(f"{name} {statistics.fmean(g):+.2f}" for name, g in gains.items())
        + ".",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
