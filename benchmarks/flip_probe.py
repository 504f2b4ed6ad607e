"""The plan's flip probe (edgecls.evaluate.flips) on the offline datasets, beside a pixel model.

    python benchmarks/flip_probe.py          # about a minute on 2 CPU cores

For digits, mnist5k and Fashion-MNIST: the sample the plan takes (60 training images per class,
64 px), the probe's plain and mirrored top-1 and its decision, and the same for a 5-nearest-
neighbour classifier on 16 px pixels fitted on the same half (why the probe uses ImageNet
features: a pixel model loses as much on a mirrored shoe as on a mirrored digit).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from edgecls.data.loader import labelled_sample
from edgecls.evaluate.flips import MIRROR_KEEPS_CLASS, PROBE_PER_CLASS, PROBE_SIDE, probe_flips


def pixel_probe(pixels: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    grey = torch.from_numpy(pixels).float().mean(dim=1, keepdim=True)
    small = torch.nn.functional.interpolate(grey, size=(16, 16), mode="area")[:, 0].numpy()
    rng = np.random.default_rng(0)
    fit = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: (labels == c).sum() // 2]
         for c in np.unique(labels)]
    )  # fmt: skip
    scored = np.setdiff1d(np.arange(len(labels)), fit)
    model = KNeighborsClassifier(5).fit(small[fit].reshape(len(fit), -1), labels[fit])
    plain = model.score(small[scored].reshape(len(scored), -1), labels[scored])
    mirrored = model.score(small[scored][:, :, ::-1].reshape(len(scored), -1), labels[scored])
    return plain, mirrored


def main() -> None:
    print(f"flips on where mirrored top-1 >= {MIRROR_KEEPS_CLASS:.0%} of plain\n")
    print(
        "| data | probe: plain / mirrored top-1 (kept) | flips | probe s "
        "| pixel 5-NN: plain / mirrored (kept) |"
    )
    print("|---|---|---|---|---|")
    for name in ("fashion-mnist", "digits", "mnist5k"):
        started = time.perf_counter()
        sample = labelled_sample(name, per_class=PROBE_PER_CLASS, side=PROBE_SIDE)
        if sample is None:
            print(f"| {name} | not installed | | | |")
            continue
        probe = probe_flips(*sample)
        seconds = time.perf_counter() - started
        plain, mirrored = pixel_probe(*sample)
        print(
            f"| {name} | {probe.plain:.1%} / {probe.mirrored:.1%} "
            f"({probe.mirrored / probe.plain:.0%}) | {'on' if probe.keeps_class else 'off'} "
            f"| {seconds:.1f} | {plain:.1%} / {mirrored:.1%} ({mirrored / plain:.0%}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
