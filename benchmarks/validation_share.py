"""The plan's validation split against the default 20% at equal time budgets: on a folder the plan
splits, it keeps VALIDATION_IMAGES (1,000) for validation and trains on the rest.

    python benchmarks/validation_share.py                      # 2 runs of 15 minutes: ~32 min
    python benchmarks/validation_share.py --repeats 2 --budget 5m

On the seeded 1,000-per-class Fashion-MNIST subset of benchmarks/auto_plan.py (10,000 training
images, scored on its 10,000 test images), each repeat runs `edgecls train DATA time_budget=B`
twice in fresh processes, alternating which goes first: "20%" with `val_fraction=0.2` given as the
user's (2,000 validation images, the plan before this rule), and "plan" with nothing but the
budget (1,000). It prints test top-1 of the kept checkpoint and of the last epoch's, the epochs,
the epoch kept and the wall time. Nothing else may run on the machine meanwhile. Writes
benchmarks/results/validation_share.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from auto_plan import make_tasks, run_edgecls
from keep_epoch import test_top1

RESULTS = Path(__file__).parent / "results" / "validation_share.md"
SETTINGS = {"20%": ["val_fraction=0.2"], "plan": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs, order alternating")
    parser.add_argument("--first", choices=list(SETTINGS), default="20%", help="first run's")
    parser.add_argument("--seed", type=int, default=0, help="of the subset drawn")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    lines = [
        f"`python benchmarks/validation_share.py --budget {args.budget} --repeats "
        f"{args.repeats} --first {args.first}` at {commit}, 2-core CPU: the Fashion-MNIST "
        "subset (10,000 training images), test top-1 % on its 10,000 test images.",
        "",
        "| repeat | validation | validation images | test top-1 % kept (epoch) | last epoch's "
        "test top-1 % | epochs | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(SETTINGS) if args.first == "20%" else list(reversed(SETTINGS))
    with tempfile.TemporaryDirectory() as folder:
        data = make_tasks("fashion-mnist", Path(folder) / "data", args.seed)[0][1]
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else list(reversed(names)):
                run_dir = Path(folder) / f"{name.strip('%')}-{repeat}"
                options = [f"time_budget={args.budget}", *SETTINGS[name]]
                result = run_edgecls(data, run_dir, options)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                line = (
                    f"| {repeat} | {name} | {metrics['num_val']} | {100 * result['top1']:.2f} "
                    f"({metrics['best_epoch']}) | {test_top1(run_dir / 'last.pt', data):.2f} | "
                    f"{result['epochs']} | {result['wall']:.0f} |"
                )
                print(line, flush=True)
                lines.append(line)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
