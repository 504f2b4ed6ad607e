"""Deployment speed-ups and INT8 accuracy, measured side by side in one run on this machine.

For each model: latency of PyTorch eager (channels-last), ONNX Runtime (FP32, INT8), OpenVINO
(FP32 with the f32 precision hint, NNCF INT8) and, with the mobile extra, LiteRT (FP32, INT8) and
ncnn at batch 1 and a larger batch, 224x224, as speed-ups over PyTorch; GFLOPs and parameters
next to the paper's supplementary Table 5; and every export of a model trained here (the
`digits` recipe) with its size, peak memory, latency and top-1 drop on its validation split.

    python benchmarks/deploy_speed.py          # prints the tables, writes them to --out
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import timm
import torch

from edgecls.config import build_config, load_recipe
from edgecls.deploy.bench import bench_model, fastest_lines, installed_backends
from edgecls.training import train

MODELS = [
    "mobilenetv3_small_100",
    "mobilenetv3_large_075",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "ghostnet_100",
    "mobilenetv2_100",
]
# Paper 000, supplementary Table 5 (OpenVINO 2021.3, Xeon Gold 6230, batch 1, 224x224, FP32).
PAPER_TABLE_5 = {
    "mobilenetv3_small_100": (0.06, 1.61),
    "mobilenetv3_large_075": (0.15, 2.83),
    "mobilenetv3_large_100": (0.22, 4.31),
    "efficientnet_b0": (0.40, 4.11),
}


def backbone_params(name: str) -> float:
    """Parameters without the 1000-class classifier, in millions."""
    model = timm.create_model(name, num_classes=0)
    return sum(p.numel() for p in model.parameters()) / 1e6


COLUMNS = [  # (backend, precision, column title), each timed where its runtime is installed
    ("onnxruntime", "fp32", "ORT"),
    ("onnxruntime", "int8", "ORT INT8"),
    ("openvino", "fp32", "OV FP32"),
    ("openvino", "int8", "OV INT8"),
    ("litert", "fp32", "LiteRT"),
    ("litert", "int8", "LiteRT INT8"),
    ("ncnn", "fp32", "ncnn"),
]


def speed_table(args: argparse.Namespace) -> str:
    here = installed_backends()
    columns = [c for c in COLUMNS if c[0] in here]
    backends = ["torch", *dict.fromkeys(c[0] for c in columns)]
    lines = [
        f"Speed-up over PyTorch eager, {args.input_size}x{args.input_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} runs (latency in ms; "
        "LiteRT and ncnn run one image at a time, so only at batch 1):",
        "",
        "| model | batch | GFLOPs | params M | torch ms | "
        + " | ".join(f"{title} ms (x)" for _, _, title in columns)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(columns),
    ]
    for name in args.models.split(","):
        for batch in (1, args.large_batch):
            chosen = [b for b in backends if batch == 1 or b not in ("litert", "ncnn")]
            rows = bench_model(
                name, chosen, ["fp32", "int8"], args.input_size, batch, args.repeats, args.warmup
            )
            by = {(r.backend, r.precision): r for r in rows}
            base = by[("torch", "fp32")].latency_ms
            cells = [
                f"{by[key].latency_ms:.2f} ({base / by[key].latency_ms:.1f}x)"
                if (key := (backend, precision)) in by
                else "-"
                for backend, precision, _ in columns
            ]
            row = by[("torch", "fp32")]
            lines.append(
                f"| {name} | {batch} | {row.gflops:.3f} | {row.params_m:.2f} | {base:.2f} | "
                + " | ".join(cells)
                + " |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def paper_table() -> str:
    lines = [
        "GFLOPs (multiply-adds) and parameters against the paper's Table 5 (the paper's parameter "
        "counts are near the backbones without the 1000-class classifier; it does not say which "
        "classifier it counted):",
        "",
        "| model | GFLOPs here | GFLOPs paper | params M (no classifier) | params M paper |",
        "|---|---|---|---|---|",
    ]
    for name, (gflops, params) in PAPER_TABLE_5.items():
        (row,) = bench_model(name, ["torch"], ["fp32"], repeats=1, warmup=0)
        lines.append(
            f"| {name} | {row.gflops:.3f} | {gflops:.2f} | {backbone_params(name):.2f} | "
            f"{params:.2f} |"
        )
    return "\n".join(lines)


def trained_model_table(args: argparse.Namespace) -> str:
    """Every export of a model trained here, with the accuracy each keeps: what
    `edgecls bench RUN` recommends from."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        config = build_config(load_recipe("digits"), {"max_epochs": args.train_epochs})
        train(config, run_dir, progress=False)
        rows = bench_model(
            str(run_dir), installed_backends(), ["fp32", "bf16", "int8"], repeats=args.repeats
        )
    lines = [
        f"Every export of a model trained here (`digits` recipe, {args.train_epochs} epochs, "
        "MobileNetV3-small at 32x32, batch 1), scored on the validation split "
        "(top-1 drop in points against the checkpoint):",
        "",
        "| backend | precision | file MB | peak MB | latency ms | top-1 drop |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r.file_mb:.2f}" if r.file_mb is not None else "-"
        lines.append(
            f"| {r.backend} | {r.precision} | {size} | {r.peak_memory_mb:.0f} | "
            f"{r.latency_ms:.2f} | {r.top1_drop:+.2f} |"
        )
    lines += ["", *fastest_lines(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--large-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/deploy_speed.md"))
    args = parser.parse_args()
    text = "\n\n".join([speed_table(args), paper_table(), trained_model_table(args)]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
