"""Which LR schedule gives the better model under a fixed time budget: the paper's plateau
schedule made budget-aware (forced decay at 75% of the training time, stop at the budget) or a
linear decay to zero at the end of the budget (Li et al. 2020, "Budgeted Training")?

    python benchmarks/budget_schedule.py                  # about 30 minutes on 2 CPU cores
    python benchmarks/budget_schedule.py --datasets digits --budget 1m --small-budget 1m

Each dataset (and its 200-image subset) is written out as an image folder as in
`benchmarks/auto_plan.py`, then planned and trained by `edgecls train DATA time_budget=B
schedule=S`: everything but the schedule is the plan's choice, so both runs get the same model,
input size, batch size and LR. The winner is the default of budgeted plans (`BUDGET_SCHEDULE` in
`edgecls/plan.py`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from auto_plan import make_tasks, run_edgecls

SCHEDULES = ("budget_linear", "plateau_v2")
RESULTS = Path(__file__).parent / "results" / "budget_schedule.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist5k,fashion-mnist")
    parser.add_argument("--budget", default="5m", help="time_budget of the full datasets")
    parser.add_argument("--small-budget", default="2m", help="time_budget of the 200-image ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    lines = [
        f"`edgecls train DATA time_budget=B schedule=S`, seed {args.seed}, 2-core CPU: top-1 % "
        "(epochs, wall s)",
        "",
        "| data | split | budget | model, input | " + " | ".join(SCHEDULES) + " |",
        "|---|---|---|---|" + "---|" * len(SCHEDULES),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name in args.datasets.split(","):
            for label, data in make_tasks(name, Path(folder) / "data", args.seed):
                budget = args.small_budget if label.endswith("200") else args.budget
                runs = Path(folder) / "runs" / label.replace(" ", "-")
                results = {
                    schedule: run_edgecls(
                        data, runs / schedule, [f"time_budget={budget}", f"schedule={schedule}"]
                    )
                    for schedule in SCHEDULES
                }
                print(json.dumps({"data": label, **results}), flush=True)
                first = results[SCHEDULES[0]]
                cells = [
                    f"{100 * r['top1']:.2f} ({r['epochs']}, {r['wall']:.0f})"
                    for r in results.values()
                ]
                lines.append(
                    f"| {label} | {first['split']} | {budget} | {first['model']}, "
                    f"{first['input']} | " + " | ".join(cells) + " |"
                )
    table = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
