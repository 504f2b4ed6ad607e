"""The speed-run tricks against the plan at equal wall time (issue 26): `edgecls ablate` without a
recipe, on the seeded 1,000-per-class Fashion-MNIST subset of benchmarks/auto_plan.py.

    python benchmarks/plan_tricks.py                 # 5 rows of 5 minutes: about 30 minutes
    python benchmarks/plan_tricks.py --budget 2m --stack label_smoothing,whiten_stem
    python benchmarks/plan_tricks.py --dataset digits --subset --budget 2m --stack mixup

Every row trains what `edgecls train DATA time_budget=B` plans, with the tricks of --stack added
one at a time, each row for the whole budget; test top-1 is on the 10,000 test images. Nothing
else may run on the machine meanwhile: a row that shares the cores trains fewer epochs. Writes
benchmarks/results/plan_tricks.md (append with --append).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from auto_plan import make_tasks

RESULTS = Path(__file__).parent / "results" / "plan_tricks.md"
STACK = "label_smoothing,optimizer=nesterov,progressive_resizing,whiten_stem,ema=0.995"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--stack", default=STACK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subset", action="store_true", help="the 200-image subset instead")
    parser.add_argument("--append", action="store_true", help="add to the results file")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        tasks = make_tasks(args.dataset, Path(folder) / "data", args.seed)
        _, data = tasks[1] if args.subset else tasks[0]
        out = Path(folder) / "ablation"
        command = [sys.executable, "-m", "edgecls", "ablate", str(data), "--stack", args.stack]
        command += [f"time_budget={args.budget}", f"seed={args.seed}", "--quiet", "--out", str(out)]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise SystemExit(f"edgecls ablate failed: {done.stderr[-2000:]}")
        table = (out / "ablation.md").read_text()
    text = (
        f"`python benchmarks/plan_tricks.py --dataset {args.dataset}"
        f"{' --subset' if args.subset else ''} --budget {args.budget} "
        f"--stack {args.stack} --seed {args.seed}` at commit {commit}, 2-core CPU "
        f"({args.dataset}{', its 200-image subset' if args.subset else ''}; Fashion-MNIST: "
        f"1,000 per class):\n\n{table}"
    )
    print(text)
    previous = RESULTS.read_text() + "\n" if args.append and RESULTS.exists() else ""
    RESULTS.write_text(previous + text)


if __name__ == "__main__":
    main()
