"""The data audit (`edgecls check-data --audit`) against injected faults, beside simple baselines.

    python benchmarks/audit.py              # about 10 minutes on 2 CPU cores (the SVC most)

For Fashion-MNIST (900 training images per class from its training set, 100 validation images
per class from its test set: 10,000) and scikit-learn's digits (1,797, a seeded 20% as val),
written as PNG folders to a temporary folder, with seeded faults:

- 5% of the training labels flipped to another class (the file moved to that class's folder);
- 3% of the validation images copied into train after a 2x up-and-down rescale, a contrast and a
  brightness change (each x0.8-1.2) and a JPEG re-encode (quality 70-90);
- 1% of the validation images copied into train byte for byte.

`--crop N` first cuts N px off each edge of the near copies (a slightly cropped copy).

It prints, per dataset: recall and precision of the leaked pairs (a reported group across splits
counts each pair of its images in different splits), beside a byte-hash-only baseline and a sweep
of the near-duplicate gap; recall and precision of the flipped labels among the audit's top
k suspects (k = twice the number flipped), beside an RBF SVC on the raw pixels (5-fold
cross-validated probabilities, ranked by the probability of the given label); and the audit's
wall time (decoding, features, everything, as `check-data --audit` runs it). Then, unless
--no-saliency, the saliency maps' pointing game of benchmarks/saliency.py (about 2 minutes more).
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import edgecls
from edgecls.data import load_dataset
from edgecls.data.builtin import DEBIAN_FASHION_MNIST, _read_idx
from edgecls.evaluate import audit as audit_module

RESULTS = Path(__file__).parent / "results" / "audit.md"
FLIPPED, NEAR, EXACT = 0.05, 0.03, 0.01
GAPS = (0.1, 0.15, 0.25, 0.35, 0.5)


def fashion(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    def pick(images, labels, per_class):
        keep = np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
        )
        return images[keep], labels[keep]

    folder = DEBIAN_FASHION_MNIST
    train = pick(_read_idx(folder / "train-images-idx3-ubyte.gz"),
                 _read_idx(folder / "train-labels-idx1-ubyte.gz"), 900)  # fmt: skip
    val = pick(_read_idx(folder / "t10k-images-idx3-ubyte.gz"),
               _read_idx(folder / "t10k-labels-idx1-ubyte.gz"), 100)  # fmt: skip
    return (*train, *val)


def digits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * 255 / 16).astype(np.uint8)
    order = rng.permutation(len(images))
    cut = int(0.8 * len(images))
    return (images[order[:cut]], data.target[order[:cut]],
            images[order[cut:]], data.target[order[cut:]])  # fmt: skip


def near_copy(image: Image.Image, rng: np.random.Generator, crop: int = 0) -> bytes:
    """The issue's near copy: 2x up and down, contrast and brightness x0.8-1.2, JPEG 70-90;
    first `crop` px off each edge (the copy is that much smaller)."""
    image = image.crop((crop, crop, image.width - crop, image.height - crop))
    w, h = image.size
    image = image.resize((2 * w, 2 * h), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.8, 1.2))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(70, 91)))
    return buffer.getvalue()


def write_faulty(root: Path, parts, rng: np.random.Generator, crop: int = 0) -> dict:
    """The folder with its faults; returns the truth: flipped paths, injected leak pairs."""
    train_x, train_y, val_x, val_y = parts
    flipped = set(rng.choice(len(train_y), round(FLIPPED * len(train_y)), replace=False).tolist())
    paths = {}
    for split, xs, ys in (("train", train_x, train_y), ("val", val_x, val_y)):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            label = int(y)
            if split == "train" and i in flipped:
                label = int((y + rng.integers(1, 10)) % 10)
            path = root / split / str(label) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(path)
            paths[split, i] = str(path)
    n_near, n_exact = round(NEAR * len(val_y)), round(EXACT * len(val_y))
    chosen = rng.choice(len(val_y), n_near + n_exact, replace=False)
    pairs = set()
    for k, i in enumerate(chosen.tolist()):
        source = paths["val", i]
        if k < n_near:
            copy = root / "train" / str(int(val_y[i])) / f"near_of_val_{i}.jpg"
            copy.write_bytes(near_copy(Image.open(source), rng, crop))
        else:
            copy = root / "train" / str(int(val_y[i])) / f"exact_of_val_{i}.png"
            shutil.copy(source, copy)
        pairs.add(frozenset((source, str(copy))))
    return {"flipped": {paths["train", i] for i in flipped}, "pairs": pairs}


def cross_pairs(groups: list[tuple[list[str], list[str]]]) -> set[frozenset]:
    """Every pair of images of one group that sit in different splits."""
    found = set()
    for paths, splits in groups:
        for (a, sa), (b, sb) in itertools.combinations(zip(paths, splits, strict=True), 2):
            if sa != sb:
                found.add(frozenset((a, b)))
    return found


def scores(found: set, truth: set) -> tuple[float, float]:
    hits = len(found & truth)
    return hits / max(len(truth), 1), hits / max(len(found), 1)


def svc_ranking(root: Path, seed: int) -> list[str]:
    """The baseline: RBF SVC on the raw pixels of the files (native size, grey), 5-fold
    cross-validated probabilities, the images ranked by the probability of their label."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import SVC

    warnings.filterwarnings("ignore", "The `probability` parameter", FutureWarning)  # sklearn 1.9
    files = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    images = [Image.open(f).convert("L") for f in files]
    size = Counter(image.size for image in images).most_common(1)[0][0]  # cropped copies: resized
    x = np.stack([np.asarray(i.resize(size), np.float32).ravel() / 255 for i in images])
    y = np.array([int(f.parent.name) for f in files])
    probabilities = cross_val_predict(
        SVC(probability=True, random_state=seed),
        x,
        y,
        cv=StratifiedKFold(5, shuffle=True, random_state=seed),
        method="predict_proba",
    )
    given = probabilities[np.arange(len(y)), y]
    return [str(files[i]) for i in np.argsort(given, kind="stable")]


def gap_sweep(root: Path, truth: dict) -> list[str]:
    """Leak recall and precision of the near-duplicate test alone at other gaps (the largest
    ratio of a copy's distance to the next picture's)."""
    dataset = load_dataset(str(root), input_size=64, progress=False)
    pixels = np.concatenate([dataset.train.pixels, dataset.val.pixels])
    paths = dataset.train.sources + dataset.val.sources
    splits = ["train"] * len(dataset.train) + ["val"] * len(dataset.val)
    descriptors = audit_module.near_descriptors(pixels)
    crops = [audit_module.near_descriptors(pixels, crop) for crop in audit_module.NEAR_CROPS]
    rows = []
    for gap in GAPS:
        pairs = audit_module.near_pairs(descriptors, gap=gap, crops=crops)
        found = {frozenset((paths[a], paths[b])) for a, b in pairs if splits[a] != splits[b]}
        recall, precision = scores(found, truth["pairs"])
        rows.append(f"{gap}: recall {recall:.1%}, precision {precision:.1%} ({len(found)})")
    return [*rows, threshold_bound(descriptors, paths, splits, truth)]


def threshold_bound(
    descriptors: np.ndarray, paths: list[str], splits: list[str], truth: dict
) -> str:
    """How far apart the near copies stand at all: the distance (1 - correlation of the
    descriptors) within which 95% of the injected near copies lie, and how many pairs of
    distinct train and val images are that close. No rule on this distance alone can find 95% of
    the copies at a better precision than the one printed."""
    index = {path: i for i, path in enumerate(paths)}
    near = [sorted(index[p] for p in pair) for pair in truth["pairs"] if "near_of_val" in str(pair)]
    if not near:
        return "no near copies"
    a, b = np.array(near).T
    reach = float(np.quantile(1 - (descriptors[a] * descriptors[b]).sum(1), 0.95))
    split = np.array(splits)
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    close = (1 - descriptors[val] @ descriptors[train].T) <= reach
    row, column = {i: r for r, i in enumerate(val)}, {i: c for c, i in enumerate(train)}
    for pair in truth["pairs"]:  # injected copies, near and exact, are not distinct images
        i, j = sorted((index[p] for p in pair), key=lambda i: split[i] != "val")
        close[row[i], column[j]] = False
    found = 0.95 * len(near)
    bound = found / (found + close.sum())
    return (
        f"95% of the {len(near)} near copies within distance {reach:.4f} of their source, as are "
        f"{close.sum()} pairs of distinct train and val images: at most {bound:.1%} precision "
        "at 95% recall for any threshold on this distance"
    )


def bench(name: str, parts, seed: int, folder: Path, crop: int = 0) -> list[str]:
    root = folder / name
    truth = write_faulty(root, parts, np.random.default_rng(seed), crop)
    start = time.perf_counter()
    audit = edgecls.audit(root, out_dir=folder / f"{name}-audit", seed=seed)
    wall = time.perf_counter() - start
    result = audit.result
    leaks = cross_pairs([(g.paths, g.splits) for g in result.leaks])
    leak_recall, leak_precision = scores(leaks, truth["pairs"])
    hashed = cross_pairs([(g.paths, g.splits) for g in result.leaks if g.kind == "exact"])
    hash_recall, hash_precision = scores(hashed, truth["pairs"])
    k = 2 * len(truth["flipped"])
    top = set(result.label_ranking[:k])
    flip_recall, flip_precision = scores(top, truth["flipped"])
    flagged_recall, flagged_precision = scores(
        {issue.path for issue in result.label_issues}, truth["flipped"]
    )
    start = time.perf_counter()
    baseline = set(svc_ranking(root, seed)[:k])
    svc_wall = time.perf_counter() - start
    svc_recall, svc_precision = scores(baseline, truth["flipped"])
    images = sum(result.images.values())
    steps = ", ".join(f"{step} {s:.1f}" for step, s in result.seconds.items())
    return [
        f"| {name} | {images} | {len(truth['pairs'])} | {leak_recall:.1%} | {leak_precision:.1%} "
        f"| {hash_recall:.1%} / {hash_precision:.1%} | {len(truth['flipped'])} "
        f"| {flip_recall:.1%} / {flip_precision:.1%} | {len(result.label_issues)}: "
        f"{flagged_recall:.1%} / {flagged_precision:.1%} "
        f"| {svc_recall:.1%} / {svc_precision:.1%} | {wall:.1f} | {svc_wall:.1f} |",
        f"  {name}: audit steps (s): {steps}; near-duplicate gap sweep (leak pairs): "
        + "; ".join(gap_sweep(root, truth)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["fashion-mnist", "digits"])
    parser.add_argument("--crop", type=int, default=0, help="near copies cropped by this many px")
    parser.add_argument(
        "--no-saliency", action="store_true", help="skip the pointing game (benchmarks/saliency.py)"
    )
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    header = [
        f"`python benchmarks/audit.py{f' --crop {args.crop}' if args.crop else ''}` at commit "
        f"{commit} (seed {args.seed}):",
        "",
        "| data | images | leaked pairs | leak recall | leak precision | hash only R / P "
        "| flipped | audit top-2k R / P | flagged by cleanlab: R / P | SVC top-2k R / P "
        "| audit s | SVC s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    notes = []
    sources = {"fashion-mnist": fashion, "digits": digits}
    with tempfile.TemporaryDirectory() as folder:
        for name, load in sources.items():
            if args.only and name != args.only:
                continue
            row, note = bench(
                name, load(np.random.default_rng(args.seed)), args.seed, Path(folder), args.crop
            )
            header.append(row)
            notes.append(note)
            print(row, "\n" + note, flush=True)
    if not args.no_saliency:
        from saliency import PATCH, SIZE, measure, table

        notes += ["", "Saliency maps, the pointing game of benchmarks/saliency.py (defaults):", ""]
        notes += [table(measure(seed=args.seed)), f"chance: {PATCH**2 / SIZE**2:.1%}"]
        print("\n".join(notes[-4:]), flush=True)
    RESULTS.write_text("\n".join([*header, "", *notes]) + "\n")


if __name__ == "__main__":
    main()
