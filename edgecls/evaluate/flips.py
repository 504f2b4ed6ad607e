"""Does a mirror image keep its class? The probe behind the plan's `hflip` (issue 26).

Horizontal flips are free accuracy for clothing, faces and most photos, and harm digits and text,
where a mirrored image is not of its class any more. A pixel model cannot tell the two apart (a
mirrored shoe is as new to it as a mirrored 3), but ImageNet features, trained on flipped photos,
can: a logistic regression on them, fitted on half a sample of the training images, scores the
other half as it is and mirrored. Measured (benchmarks/flip_probe.py): mirrored over plain top-1
about 1.00 on Fashion-MNIST, 0.86 on digits, 0.82 on MNIST, 0.00 on arrows whose direction is the
class; flips are kept where it is at least MIRROR_KEEPS_CLASS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgecls.errors import UserError
from edgecls.evaluate.audit import pooled_features

MIRROR_KEEPS_CLASS = 0.95  # mirrored top-1 at least this share of plain top-1: flips are safe
PROBE_PER_CLASS = 60  # training images per class the probe decodes (half fit, half scored)
PROBE_SIDE = 64  # pixels: what the features network sees
PROBE_C = 0.1  # inverse regularisation of the probe's logistic regression


@dataclass(frozen=True)
class FlipProbe:
    plain: float  # top-1 of the probe on held-out images
    mirrored: float  # top-1 on the same images mirrored
    images: int
    seconds: float

    @property
    def keeps_class(self) -> bool:
        return self.mirrored >= MIRROR_KEEPS_CLASS * self.plain


def probe_flips(pixels: np.ndarray, labels: np.ndarray, seed: int = 0) -> FlipProbe | None:
    """Fit on half of each class, score the other half plain and mirrored; None where the
    features' ImageNet weights are not installed or a class has fewer than two images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    fit, scored = [], []
    for label in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == label))
        if len(where) < 2:
            return None
        fit += where[: len(where) // 2].tolist()
        scored += where[len(where) // 2 :].tolist()
    mirrored = np.ascontiguousarray(pixels[scored, :, :, ::-1])
    try:
        blocks = pooled_features(np.concatenate([pixels, mirrored]), 256, False)
    except UserError:
        return None
    features = np.hstack([StandardScaler().fit_transform(block) for block in blocks])
    plain_features, mirrored_features = features[: len(pixels)], features[len(pixels) :]
    model = LogisticRegression(C=PROBE_C, max_iter=1000).fit(plain_features[fit], labels[fit])
    return FlipProbe(
        plain=float(model.score(plain_features[scored], labels[scored])),
        mirrored=float(model.score(mirrored_features, labels[scored])),
        images=len(pixels),
        seconds=time.perf_counter() - started,
    )
