"""Which weights to keep on a tiny validation set: the epoch picked on validation (best.pt) or the
last epoch's (last.pt), scored on the same runs' test images, so the comparison carries no
training noise. Each run is the plan with `keep_epoch=best`, so best.pt is the picked epoch.

    python benchmarks/keep_epoch.py                    # about 20 minutes on 2 CPU cores
    python benchmarks/keep_epoch.py --tasks "digits 200" --seeds 0,1 --options mixup=0.2

Tasks are the 200-image subsets of benchmarks/auto_plan.py (40 validation images each), each
trained by a fresh `python -m edgecls train DATA time_budget=B` process; both checkpoints are
scored with the test-time views they were trained with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from auto_plan import make_tasks, run_edgecls

from edgecls import runs
from edgecls.data import load_configured_dataset
from edgecls.evaluate.inference import predict_logits
from edgecls.models import model_from_checkpoint

RESULTS = Path(__file__).parent / "results" / "keep_epoch.md"


def test_top1(checkpoint: Path, data: Path) -> float:
    """Test top-1 % of a checkpoint, as deployed (its test-time views included)."""
    saved = runs.load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(saved)
    split = load_configured_dataset(config, str(data), progress=False).test
    logits = predict_logits(model, split.images)
    return 100 * (logits.argmax(1) == split.labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits 200,mnist5k 200,fashion-mnist 200")
    parser.add_argument("--budget", default="2m")
    parser.add_argument("--seeds", default="0,1,2", help="one planned run per seed")
    parser.add_argument("--options", default="", help="key=value settings, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent
    ).stdout.strip()
    options = [o for o in args.options.split(",") if o]
    settings = " ".join([f"time_budget={args.budget}", "keep_epoch=best", *options])
    lines = [
        f'`python benchmarks/keep_epoch.py --tasks "{args.tasks}" --budget {args.budget} '
        f"--seeds {args.seeds}"
        + (f" --options {args.options}" if options else "")
        + f"` at {commit}: `edgecls train DATA {settings} seed=S`, then the test top-1 % of its "
        "best.pt (the epoch picked on validation top-1, ties to the lower loss) and of its "
        "last.pt, 2-core CPU.",
        "",
        "| data | seed | model, input | epochs | picked epoch | picked: test top-1 % | "
        "last: test top-1 % | last - picked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gains: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tasks = {}
        wanted = args.tasks.split(",")
        for name in {task.split(" ")[0] for task in wanted}:
            for label, data in make_tasks(name, Path(folder) / "data", 0):
                tasks[label] = data
        for label in wanted:
            for seed in args.seeds.split(","):
                run_dir = Path(folder) / "runs" / f"{label.replace(' ', '-')}-{seed}"
                run = run_edgecls(
                    tasks[label],
                    run_dir,
                    [f"time_budget={args.budget}", "keep_epoch=best", f"seed={seed}", *options],
                )
                picked = test_top1(run_dir / "best.pt", tasks[label])
                last = test_top1(run_dir / "last.pt", tasks[label])
                best_epoch = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
                gains.setdefault(label, []).append(last - picked)
                lines.append(
                    f"| {label} | {seed} | {run['model']}, {run['input']} | {run['epochs']} | "
                    f"{best_epoch} | {picked:.2f} | {last:.2f} | {last - picked:+.2f} |"
                )
                print(lines[-1], flush=True)
    every = [g for task in gains.values() for g in task]
    lines += [
        "",
        "Mean of last - picked: "
        + ", ".join(f"{label} {statistics.fmean(g):+.2f}" for label, g in gains.items())
        + f"; over all {len(every)} runs {statistics.fmean(every):+.2f}, the last ahead in "
        f"{sum(g > 0 for g in every)}, behind in {sum(g < 0 for g in every)}.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
