"""Every run at the machine's ceiling: edgecls's training throughput against a bare training
step of the same model, and its whole run against timm's own train.py on the same work.

    python benchmarks/ceiling.py                       # about 10 minutes on 2 CPU cores
    python benchmarks/ceiling.py --timm-repo /tmp/timm-repo   # with timm's train.py: about 20
    python benchmarks/ceiling.py --quick               # a smoke check: about 2 minutes

Rows: MobileNetV3-small from scratch at 32 px on grey Fashion-MNIST (1,000 training images per
class, the full 10,000-image test set as validation, 10 epochs), the same on the images written
as RGB PNGs, and MobileNetV3-large at 224 px colour on 50 + 50 images per class for 3 epochs.
Each row, back to back (the machine is shared: only ratios measured side by side count):

1. `edgecls train FOLDER model=... input_size=... batch_size=128 optimizer=sgd schedule=cosine
   max_epochs=E lr=0.05` as a fresh process timed from outside; its training images per second
   without validation passes (metrics.json's phase_seconds; before that existed, train_seconds,
   validation included), and its wall time split by phase.
2. The ceiling: random tensors through the same timm model, SGD (momentum 0.9, lr 0.05, weight
   decay 5e-4), batch 128, in the memory layout and precision the run's config.yaml says
   (channels_last, amp: bf16 on a CPU); a few warm-up steps, then steps for --seconds.
3. With --timm-repo DIR: DIR/train.py on the same folder, model, input size, channels, batch,
   epochs, LR, momentum and weight decay, `--opt momentum` (edgecls's sgd; timm's own `sgd` is
   Nesterov), `--sched cosine`, `--device cpu`, `-j` the CPU cores, the run's channels_last and
   amp; its other defaults stay (5 warm-up epochs as edgecls's, label smoothing 0.1, random-resized
   crop, flip, colour jitter, no weight decay on biases and norms). Timed from outside and run as
   `python -P DIR/train.py` (Python 3.11+) so that it imports the installed timm, not DIR/timm.
   DIR is a checkout of https://github.com/huggingface/pytorch-image-models (`git clone`); its
   train.py must run with the installed timm (`--quick` checks it), else check out the tag of the
   installed version: `git -C DIR checkout v$(python -c "import timm; print(timm.__version__)")`.

The edgecls measured is the checkout this script is in (its processes start there), whichever
edgecls the virtualenv has installed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from auto_plan import FASHION, per_class, read_idx, write_folder

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose edgecls is measured
RESULTS = Path(__file__).parent / "results" / "ceiling.md"
BATCH = 128
LR = 0.05
TARGET = 0.9  # edgecls's training throughput as a share of the ceiling
PHASES = (  # metrics.json's phase_seconds, in the order a run goes through them
    "startup",
    "plan",
    "load",
    "audit",
    "lr_search",
    "setup",
    "train",
    "validate",
    "checkpoints",
    "evaluate",
    "report",
)


@dataclass
class Row:
    name: str
    model: str
    size: int
    grey: bool
    train_per_class: int
    val_per_class: int | None  # None: the full test set
    epochs: int


def make_rows(args: argparse.Namespace) -> dict[str, Row]:
    small = "mobilenetv3_small_100"
    val = args.images if args.quick else None
    return {
        "small-grey": Row("small-grey", small, 32, True, args.images, val, args.epochs),
        "small-colour": Row("small-colour", small, 32, False, args.images, val, args.epochs),
        "large-224": Row(
            "large-224",
            "mobilenetv3_large_100",
            224,
            False,
            args.large_images,
            args.large_images,
            args.large_epochs,
        ),
    }


def make_folder(root: Path, row: Row, seed: int = 0) -> Path:
    """train/ and val/ of Fashion-MNIST as PNGs, grey or RGB; the same images for the same
    counts, whatever the colour."""
    rng = np.random.default_rng(seed)
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    tx = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    ty = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    keep = per_class(y, row.train_per_class, rng)
    x, y = x[keep], y[keep]
    if row.val_per_class is not None:
        held = per_class(ty, row.val_per_class, rng)
        tx, ty = tx[held], ty[held]
    if not row.grey:
        x, tx = np.repeat(x[..., None], 3, axis=-1), np.repeat(tx[..., None], 3, axis=-1)
    folder = root / row.name
    write_folder(folder / "train", x, y)
    write_folder(folder / "val", tx, ty)
    return folder


def trained_per_epoch(n: int) -> int:
    """Images one epoch trains: the loop drops the last short batch unless it is the only one."""
    return n if n <= BATCH else n - n % BATCH


def run_edgecls(data: Path, run_dir: Path, row: Row, cache_dir: Path) -> dict:
    """`edgecls train` as a fresh process; its wall, phases, throughput and top-1. The disk cache
    goes to a folder of this benchmark's, so no earlier run's decoded images are reused."""
    settings = [
        f"model={row.model}",
        "pretrained=false",
        f"input_size={row.size}",
        f"batch_size={BATCH}",
        "optimizer=sgd",
        "schedule=cosine",
        f"max_epochs={row.epochs}",
        f"lr={LR}",
        f"grayscale={str(row.grey).lower()}",
    ]
    command = [sys.executable, "-m", "edgecls", "train", str(data), "--run-dir", str(run_dir)]
    env = {**os.environ, "EDGECLS_CACHE_DIR": str(cache_dir)}
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--quiet", *settings], capture_output=True, text=True, cwd=ROOT, env=env
    )
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"edgecls failed on {data}: {result.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    with open(run_dir / "history.csv") as history:
        last = list(csv.DictReader(history))[-1]
    phases = metrics.get("phase_seconds")
    if phases is not None:
        measured = {name: phases.get(name) for name in PHASES}
    else:  # before phase_seconds: training includes validation, evaluation includes the report
        plan = json.loads((run_dir / "plan.json").read_text())["seconds"]
        measured = {"plan": plan, "train": metrics["train_seconds"]}
        measured["evaluate"] = metrics["final_seconds"]
    images = metrics["epochs_trained"] * trained_per_epoch(metrics["num_train"])
    return {
        "wall": wall,
        "phases": measured,
        "split_phases": phases is not None,
        "images": images,
        "rate": images / measured["train"],
        "epochs": metrics["epochs_trained"],
        "rollbacks": len(metrics["rollbacks"]),
        "counts": f"{metrics['num_train']} / {metrics['num_val']}",
        "top1": metrics["val_top1"],
        "last_top1": float(last["val_top1"]),
        "channels_last": config["channels_last"],
        "amp": config["amp"],
    }


def ceiling(row: Row, channels_last: bool, amp: bool, seconds: float, warmup: int) -> float:
    """Images per second of the bare training step: no data, no loop around it."""
    torch.manual_seed(0)
    channels = 1 if row.grey else 3
    layout = torch.channels_last if channels_last else torch.preserve_format
    model = timm.create_model(row.model, pretrained=False, num_classes=10, in_chans=channels)
    model = model.to(memory_format=layout).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(BATCH, channels, row.size, row.size).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    steps, started = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps * BATCH / (time.perf_counter() - started)


def timm_command(repo: Path, data: Path, out: Path, row: Row, run: dict) -> list[str]:
    """timm's train.py on the same work as the edgecls run (see the module docstring)."""
    command = [
        sys.executable, "-P", str(repo / "train.py"),
        "--data-dir", str(data), "--train-split", "train", "--val-split", "val",
        "--model", row.model, "--num-classes", "10",
        "--img-size", str(row.size), "--in-chans", "1" if row.grey else "3",
        "-b", str(BATCH), "--opt", "momentum", "--momentum", "0.9", "--weight-decay", "5e-4",
        "--lr", str(LR), "--sched", "cosine", "--epochs", str(row.epochs),
        "--device", "cpu", "-j", str(os.cpu_count()),
        "--output", str(out), "--experiment", row.name,
    ]  # fmt: skip
    if run["channels_last"]:
        command.append("--channels-last")
    if run["amp"]:
        command += ["--amp", "--amp-dtype", "bfloat16"]
    return command


def run_timm(command: list[str], out: Path, name: str) -> dict:
    """timed from outside; top-1 of its best and last epochs from its summary.csv."""
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"timm's train.py failed: {result.stderr[-3000:]}")
    with open(out / name / "summary.csv") as summary:
        top1 = [float(epoch["eval_top1"]) / 100 for epoch in csv.DictReader(summary)]
    return {"wall": wall, "top1": max(top1), "last_top1": top1[-1]}


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def tables(results: list[dict], args: argparse.Namespace, commit: str) -> list[str]:
    options = " ".join(sys.argv[1:])
    run = results[0]["edgecls"]
    lines = [
        f"`python benchmarks/ceiling.py{' ' + options if options else ''}` at {commit}, "
        f"torch {torch.__version__}, timm {timm.__version__}, {os.cpu_count()}-core CPU, batch "
        f"{BATCH}, SGD (momentum 0.9, lr {LR}, weight decay 5e-4), cosine, from scratch; "
        f"channels_last {run['channels_last']}, amp {run['amp']} (the runs' config).",
        "",
        "| row | model, input | train / val images | ceiling img/s | edgecls img/s | edgecls / "
        f"ceiling (target {TARGET:.0%}) | images trained (epochs) | top-1 % best / last |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        row, e = r["row"], r["edgecls"]
        share = e["rate"] / r["ceiling"]
        flag = "ok" if share >= TARGET else f"**below {TARGET:.0%}**"
        rate = f"{e['rate']:.0f}" + ("" if e["split_phases"] else " *")
        epochs = f"{e['epochs']} of {row.epochs}"
        epochs += f", {e['rollbacks']} rollbacks" if e["rollbacks"] else ""
        lines.append(
            f"| {row.name} | {row.model}, {row.size} {'grey' if row.grey else 'RGB'} | "
            f"{e['counts']} | {r['ceiling']:.0f} | {rate} | {share:.0%} {flag} | "
            f"{e['images']} ({epochs}) | "
            f"{100 * e['top1']:.2f} / {100 * e['last_top1']:.2f} |"
        )
    lines += [
        "",
        "Where the edgecls run's wall time goes (seconds; other: wall minus the phases):",
        "",
        "| row | wall | " + " | ".join(PHASES) + " | other |",
        "|---|---|" + "---|" * (len(PHASES) + 1),
    ]
    for r in results:
        e = r["edgecls"]
        other = e["wall"] - sum(v for v in e["phases"].values() if v is not None)
        cells = [cell(e["phases"].get(name)) for name in PHASES]
        lines.append(
            f"| {r['row'].name} | {e['wall']:.1f} | " + " | ".join(cells) + f" | {other:.1f} |"
        )
    if not all(r["edgecls"]["split_phases"] for r in results):
        lines += [
            "",
            "\\* metrics.json has no phase_seconds: img/s over train_seconds, which includes the "
            "validation passes; `train` includes `validate`, `evaluate` includes `report`, and "
            "startup and loading are in `other`.",
        ]
    timed = [r for r in results if "timm" in r]
    if timed:
        lines += [
            "",
            f"Against timm's train.py ({args.timm_repo}), the same folder and work, timed from "
            "outside:",
            "",
            "| row | edgecls wall | timm wall | edgecls speedup | edgecls top-1 % best / last | "
            "timm top-1 % best / last |",
            "|---|---|---|---|---|---|",
        ]
        for r in timed:
            e, t = r["edgecls"], r["timm"]
            lines.append(
                f"| {r['row'].name} | {e['wall']:.0f} s | {t['wall']:.0f} s | "
                f"{t['wall'] / e['wall']:.2f}x | {100 * e['top1']:.2f} / "
                f"{100 * e['last_top1']:.2f} | {100 * t['top1']:.2f} / "
                f"{100 * t['last_top1']:.2f} |"
            )
        lines += ["", "timm commands (FOLDER, OUT: this benchmark's temporary folders):", ""]
        lines += [f"    {r['timm_command']}" for r in timed]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="small-grey,small-colour,large-224")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the 32 px rows")
    parser.add_argument(
        "--images", type=int, default=1000, help="training images per class of the 32 px rows"
    )
    parser.add_argument("--large-epochs", type=int, default=3, help="epochs of the 224 px row")
    parser.add_argument(
        "--large-images", type=int, default=50, help="train and val images per class at 224 px"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="timed steps of a ceiling")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before a ceiling")
    parser.add_argument("--timm-repo", type=Path, help="also run this timm checkout's train.py")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 20 + 20 images per class, 1 epoch, 13 + 13 at 224 px (one batch of "
        "128: timm drops the last short batch), 1 s ceilings",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs, args.large_images, args.large_epochs = 20, 1, 13, 1
        args.seconds, args.warmup = 1.0, 1
    rows = make_rows(args)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()

    results = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in args.rows.split(","):
            row = rows[name]
            data = make_folder(root / "data", row)
            run = run_edgecls(data, root / "runs" / name, row, root / "cache")
            result = {"row": row, "edgecls": run}
            result["ceiling"] = ceiling(
                row, run["channels_last"], run["amp"], args.seconds, args.warmup
            )
            if args.timm_repo is not None:
                command = timm_command(args.timm_repo.resolve(), data, root / "timm", row, run)
                result["timm"] = run_timm(command, root / "timm", name)
                shown = " ".join(command[1:]).replace(str(data), "FOLDER")
                result["timm_command"] = "python " + shown.replace(str(root / "timm"), "OUT")
            results.append(result)
            printable = {k: v for k, v in result.items() if k != "row"}
            print(name, json.dumps(printable), flush=True)
    table = "\n".join(tables(results, args, commit))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
