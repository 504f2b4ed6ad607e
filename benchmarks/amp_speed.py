"""Mixed precision (paper 004's FP16; `amp=true`) against FP32, training steps side by side in one
process: bf16 autocast on a CPU, fp16 with loss scaling on a GPU.

    python benchmarks/amp_speed.py            # about 2 minutes on 2 CPU cores

Each model trains a few warm-up steps, then the two precisions alternate for `--rounds`
rounds, so machine load hits both alike; the figure is the ratio of their median step times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from edgecls.config import build_config
from edgecls.data import Dataset, ImageSplit
from edgecls.training.loop import Trainer

CASES = [
    ("mobilenetv3_small_100", 32, 128),
    ("resnet20_cifar", 32, 128),
    ("mobilenetv3_large_100", 224, 32),
    ("resnet50d", 224, 16),
]


def trainer(model: str, size: int, batch: int, amp: bool) -> tuple[Trainer, torch.Tensor]:
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.arange(batch) % 10
    split = ImageSplit(images, labels, [""] * batch)
    dataset = Dataset("amp", [str(i) for i in range(10)], split, split, None, [], [], False)
    settings = {"model": model, "input_size": size, "batch_size": batch, "amp": amp}
    run = Trainer(build_config({**settings, "lr": 0.01, "schedule": "constant"}), dataset)
    pixels = (images.float() / 255).to(run.device).contiguous(memory_format=run.memory_format)
    return run, pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "fp16" if device == "cuda" else "bf16"
    print(f"device {device}, {torch.get_num_threads()} threads; amp = {kind} autocast")
    print(f"| model | input | batch | fp32 ms/step | {kind} ms/step | {kind} speed-up |")
    print("|---|---|---|---|---|---|")
    for model, size, batch in CASES:
        runs = {amp: trainer(model, size, batch, amp) for amp in (False, True)}
        labels = (torch.arange(batch) % 10).to(runs[False][0].device)
        times: dict[bool, list[float]] = {False: [], True: []}
        for run, pixels in runs.values():
            for _ in range(2):
                run.step(pixels, labels)
        for _ in range(args.rounds):
            for amp, (run, pixels) in runs.items():
                started = time.perf_counter()
                run.step(pixels, labels)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[amp].append(time.perf_counter() - started)
        fp32, mixed = (1000 * statistics.median(times[amp]) for amp in (False, True))
        print(f"| {model} | {size} | {batch} | {fp32:.1f} | {mixed:.1f} | {fp32 / mixed:.2f}x |")


if __name__ == "__main__":
    main()
