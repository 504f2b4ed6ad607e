"""How steady is the training speed planning measures: a few steps against a longer window.

    python benchmarks/planning_speed.py                  # about 3 minutes
    python benchmarks/planning_speed.py --rounds 20 --model mobilenetv3_small_100

The epochs a budget fits, and the plan's rules that count them, follow the speed timed in
planning. This times one candidate (by default the CIFAR ResNet-20 at 32 px, grey, batch 64: what
the Fashion-MNIST subset's plan chooses) in three ways, in one process: the machine's drift (the
speed over consecutive 2 s windows for a minute); then, alternating round by round, the first
sample planning takes of every candidate (`measure`: a median of a few steps) and the window the
chosen candidate is timed again over (`retime`, RETIME_SECONDS). Prints each round and the spread
of each way. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgecls.device import select_device
from edgecls.plan.candidates import Candidate
from edgecls.plan.choose import RETIME_SECONDS
from edgecls.plan.measure import _training_step, measure, retime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20_cifar")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--drift-seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=RETIME_SECONDS)
    args = parser.parse_args()

    def candidate() -> Candidate:
        return Candidate(args.model, args.input_size, "scratch", 64)

    _, train_step = _training_step(candidate(), 1, 10, select_device())
    for _ in range(5):
        train_step(False)
    drift = []
    started = time.perf_counter()
    while time.perf_counter() - started < args.drift_seconds:
        window, steps = time.perf_counter(), 0
        while time.perf_counter() - window < 2.0:
            train_step(False)
            steps += 1
        drift.append(64 * steps / (time.perf_counter() - window))
    print(f"{args.model} at {args.input_size} px, training images/s over consecutive 2 s windows:")
    print(" ".join(f"{speed:.0f}" for speed in drift))
    print(f"min {min(drift):.0f}, median {statistics.median(drift):.0f}, max {max(drift):.0f}\n")

    print(f"| round | first sample (measure) | {args.window:g} s window (retime) |")
    print("|---|---|---|")
    samples, windows = [], []
    for turn in range(args.rounds):
        for way in ("sample", "window") if turn % 2 == 0 else ("window", "sample"):
            timed = candidate()
            if way == "sample":
                measure(timed, 1, 10, amp=False)
                samples.append(timed.train_images_per_second)
            else:
                retime(timed, 1, 10, args.window)
                windows.append(timed.train_images_per_second)
        print(f"| {turn + 1} | {samples[-1]:.0f} | {windows[-1]:.0f} |", flush=True)
    print()
    for name, speeds in (("first sample", samples), ("window", windows)):
        print(
            f"{name}: min {min(speeds):.0f}, median {statistics.median(speeds):.0f}, "
            f"max {max(speeds):.0f}, max/min {max(speeds) / min(speeds):.2f}, "
            f"coefficient of variation {statistics.stdev(speeds) / statistics.fmean(speeds):.1%}"
        )


if __name__ == "__main__":
    main()
