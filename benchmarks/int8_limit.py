"""INT8 with and without an accuracy limit, per runtime, on a model trained here; and the FP32
ONNX export's top-1 agreement with the checkpoint in every runtime installed.

    python benchmarks/int8_limit.py          # about 4 minutes on 2 CPU cores

Trains the `digits` recipe (MobileNetV3-small, 32x32) for `--epochs`, then exports INT8 through
NNCF (OpenVINO), ONNX Runtime and ai-edge-quantizer (TFLite), each once plainly and once with
`--max-drop`, and prints the drop in points of top-1 against FP32 on the validation split.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

from edgecls.config import build_config, load_recipe
from edgecls.deploy.export import export_model
from edgecls.training import train

RESULTS = Path(__file__).parent / "results" / "int8_limit.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-drop", type=float, default=0.5)
    args = parser.parse_args()
    formats = ["openvino", "onnx"]
    if importlib.util.find_spec("litert_torch") is not None:
        formats.append("tflite")
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        config = build_config(load_recipe("digits"), {"max_epochs": args.epochs})
        train(config, run_dir, progress=False)
        fp32 = export_model(run_dir, "onnx", out_dir=Path(folder) / "fp32")
        lines = [
            f"`digits` recipe, {args.epochs} epochs, validation split of {fp32.num_images} "
            f"images; checkpoint top-1 {100 * fp32.checkpoint_top1:.2f}%.",
            "",
            "FP32 ONNX, top-1 agreement with the checkpoint per runtime: "
            + ", ".join(f"{name} {100 * share:.2f}%" for name, share in fp32.runtimes.items()),
            "",
            f"| INT8 through | drop, no limit (points) | drop, --max-drop {args.max_drop:g} "
            "(points) | fallback |",
            "|---|---|---|---|",
        ]
        for fmt in formats:
            plain = export_model(run_dir, fmt, "int8", out_dir=Path(folder) / f"{fmt}-plain")
            limited = export_model(
                run_dir, fmt, "int8", out_dir=Path(folder) / f"{fmt}-limit", max_drop=args.max_drop
            )
            fallback = Path(limited.fallback).name if limited.fallback else "-"
            lines.append(
                f"| {fmt} | {plain.int8_top1_drop:+.2f} | {limited.int8_top1_drop:+.2f} | "
                f"{fallback} |"
            )
            print(lines[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
