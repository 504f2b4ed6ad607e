"""Is a setting worth planning at a budget: the plan with and without it, seed by seed.

    python benchmarks/option_pairs.py --options random_erasing=0.5           # about 100 minutes
    python benchmarks/option_pairs.py --options mixup=0.2 --budget 5m --seeds 1,2
    python benchmarks/option_pairs.py --options batch_size=64 --dataset mnist5k --budget 5m

One seed of one 15-minute run moves test top-1 by about 0.3 points, more than most tricks are
worth, so a single ablation row decides little. Each seed here trains `edgecls train DATA
time_budget=B seed=S` twice on the Fashion-MNIST subset of benchmarks/auto_plan.py (or
--dataset mnist5k, scored on the images its split holds out), once as
planned and once with --options, in alternating order (A B, B A, ...) so a slow stretch of the
machine falls on both; the test top-1 is that of the kept weights as deployed (test-time views
included), on the 10,000 test images. Nothing else may run on the machine meanwhile. Appends to
benchmarks/results/option_pairs.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from auto_plan import make_tasks, run_edgecls

RESULTS = Path(__file__).parent / "results" / "option_pairs.md"
DATASETS = {
    "fashion-mnist": "the Fashion-MNIST subset (1,000 per class)",
    "mnist5k": "mnist5k (the test images are those its split holds out)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--options", required=True, help="key=value settings, comma-separated")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist5k"])
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent
    ).stdout.strip()
    options = [o for o in args.options.split(",") if o]
    lines = [
        f"`python benchmarks/option_pairs.py --options {args.options} --budget {args.budget} "
        f"--seeds {args.seeds} --dataset {args.dataset}` at {commit}: `edgecls train DATA "
        f"time_budget={args.budget} seed=S` as planned and with the options, on "
        f"{DATASETS[args.dataset]}, test top-1 % of the kept weights as deployed, 2-core CPU.",
        "",
        "| seed | order | plan: test top-1 % (epochs) | with options: test top-1 % (epochs) | "
        "difference |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    differences = []
    with tempfile.TemporaryDirectory() as folder:
        data = make_tasks(args.dataset, Path(folder) / "data", 0)[0][1]
        for turn, seed in enumerate(args.seeds.split(",")):
            common = [f"time_budget={args.budget}", f"seed={seed}"]
            arms = {"plan": common, "options": [*common, *options]}
            order = ["plan", "options"] if turn % 2 == 0 else ["options", "plan"]
            results = {
                arm: run_edgecls(data, Path(folder) / "runs" / f"{arm}-{seed}", arms[arm])
                for arm in order
            }
            plan, other = results["plan"], results["options"]
            differences.append(100 * (other["top1"] - plan["top1"]))
            lines.append(
                f"| {seed} | {' then '.join(order)} | {100 * plan['top1']:.2f} ({plan['epochs']}) "
                f"| {100 * other['top1']:.2f} ({other['epochs']}) | {differences[-1]:+.2f} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"Mean difference over {len(differences)} seeds {statistics.fmean(differences):+.2f}, "
        f"ahead in {sum(d > 0 for d in differences)}, behind in "
        f"{sum(d < 0 for d in differences)}.",
    ]
    print(lines[-1])
    previous = RESULTS.read_text() + "\n" if RESULTS.exists() else ""
    RESULTS.write_text(previous + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
