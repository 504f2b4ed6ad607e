"""Saliency maps point at what decides the class: the pointing game on a synthetic set.

    python benchmarks/saliency.py                    # about 5 minutes on 2 CPU cores
    python benchmarks/saliency.py --keep /tmp/sal    # and keep the data, test images and runs

Each 32 px colour image holds two 6 x 6 squares at random places on a noisy background: one of
four colours (blue, green, red, yellow), which is the class, and a white one, which is not.
edgecls trains a small model on it (`--recipe digits` in colour, augment=light, 4 epochs,
exported to ONNX); then, on held-out images, the pointing game (Zhang et al., 2016): the share of
images whose saliency map for the true class has its maximum inside the coloured square. Chance
is the square's share of the image, 3.5%; pointing at the brightest square would pick the white
one. Grad-CAM runs on the checkpoint, occlusion on the ONNX export in ONNX Runtime (as
`edgecls explain` does for exported models).

`measure()` returns the figures (a dict per model) for another benchmark to print; `table()`
formats them.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import edgecls
from edgecls.deploy.explain import saliency_maps
from edgecls.deploy.runtime import TorchPredictor, load_predictor
from edgecls.evaluate.saliency import TargetLayer, gradcam, peak_in_box

# In the order of the class folders' names, which is the order of the model's classes.
COLOURS = {
    "blue": (40, 60, 240),
    "green": (30, 210, 30),
    "red": (230, 30, 30),
    "yellow": (230, 220, 30),
}
SIZE, PATCH, MARGIN = 32, 6, 2


def patch_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, S, S, 3), labels (N,) and the coloured square's box (N, 4: left, top,
    right, bottom; right and bottom excluded). The white square never overlaps it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (count, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, len(COLOURS), count)
    boxes = np.zeros((count, 4), np.int64)
    places = np.arange(MARGIN, SIZE - MARGIN - PATCH + 1)
    for index, label in enumerate(labels):
        while True:
            (x, y), (u, v) = rng.choice(places, 2), rng.choice(places, 2)
            if abs(x - u) >= PATCH or abs(y - v) >= PATCH:
                break
        images[index, y : y + PATCH, x : x + PATCH] = list(COLOURS.values())[label]
        images[index, v : v + PATCH, u : u + PATCH] = 255
        boxes[index] = (x, y, x + PATCH, y + PATCH)
    return images, labels, boxes


def write_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    names = list(COLOURS)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")


def pointing(predictor, pixels: np.ndarray, labels: np.ndarray, boxes: np.ndarray, method: str):
    """The pointing game of `method` for the true classes: (share inside, seconds, method)."""
    started = time.perf_counter()
    maps, described = saliency_maps(predictor, pixels, labels.tolist(), method)
    return float(peak_in_box(maps, boxes).mean()), time.perf_counter() - started, described


def every_stage(predictor: TorchPredictor, pixels, labels, boxes) -> str:
    """Grad-CAM's pointing game on each stage of the backbone's feature_info, not only the one
    `edgecls explain` picks: whether another stage would point better."""
    backbone = getattr(predictor.model, "backbone", predictor.model)
    floats = torch.from_numpy(pixels).float() / 255
    shares = []
    for info in backbone.feature_info:
        layer = TargetLayer(info["module"], backbone.get_submodule(info["module"]), 0)
        maps = gradcam(predictor.model, floats, labels.tolist(), layer)
        shares.append(f"{info['module']} {peak_in_box(maps, boxes).mean():.1%}")
    return ", ".join(shares)


def measure(
    models: tuple[str, ...] = ("resnet20_cifar", "mobilenetv3_small_100"),
    train: int = 2000,
    test: int = 300,
    occluded: int = 100,
    epochs: int = 4,
    seed: int = 0,
    keep: Path | None = None,
) -> list[dict]:
    """Per model: test top-1, the pointing game of Grad-CAM on the checkpoint (`test` images) and
    of occlusion on its ONNX export (the first `occluded` of them), and wall times. `keep`: a
    folder to keep the data, the test images and the runs in (default: a temporary one)."""
    rows = []
    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        images, labels, _ = patch_images(train + train // 4, seed)
        write_split(root / "data" / "train", images[:train], labels[:train])
        write_split(root / "data" / "val", images[train:], labels[train:])
        test_images, test_labels, boxes = patch_images(test, seed + 1)
        write_split(root / "test", test_images, test_labels)
        pixels = np.ascontiguousarray(test_images.transpose(0, 3, 1, 2))
        for model in models:
            started = time.perf_counter()
            run = edgecls.train(
                str(root / "data"),
                recipe="digits",
                run_dir=root / model,
                overwrite=True,
                progress=False,
                model=model,
                grayscale=False,
                augment="light",
                max_epochs=epochs,
                warmup_epochs=1,
                export="onnx",
            )
            checkpoint = TorchPredictor(run.run_dir / "best.pt")
            top1 = (checkpoint.predict_proba(pixels).argmax(1) == test_labels).mean()
            row = {"model": model, "train_s": time.perf_counter() - started, "test_top1": top1}
            row["report_s"] = run.metrics["saliency"]["seconds"]  # report.html's maps
            row["gradcam"], row["gradcam_s"], row["gradcam_how"] = pointing(
                checkpoint, pixels, test_labels, boxes, "gradcam"
            )
            row["stages"] = every_stage(checkpoint, pixels, test_labels, boxes)
            exported = load_predictor(run.run_dir / "export" / "model.onnx")
            row["occlusion"], row["occlusion_s"], row["occlusion_how"] = pointing(
                exported, pixels[:occluded], test_labels[:occluded], boxes[:occluded], "occlusion"
            )
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | train s | test top-1 % | Grad-CAM pointing % | s | occlusion pointing % | s "
        "| report maps s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['train_s']:.0f} | {100 * r['test_top1']:.1f} | "
            f"{100 * r['gradcam']:.1f} | {r['gradcam_s']:.1f} | {100 * r['occlusion']:.1f} | "
            f"{r['occlusion_s']:.1f} | {r['report_s']:.1f} |"
        )
    lines += ["", *(f"- {r['model']}: {r['gradcam_how']}; {r['occlusion_how']}" for r in rows)]
    lines += [
        "",
        "Grad-CAM pointing at every stage:",
        *(f"- {r['model']}: {r['stages']}" for r in rows),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20_cifar", "mobilenetv3_small_100"])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=300, help="images for Grad-CAM")
    parser.add_argument("--occluded", type=int, default=100, help="of them, for occlusion")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the data, test images and runs here")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = measure(
        tuple(args.models), args.train, args.test, args.occluded, args.epochs, args.seed, args.keep
    )
    print(table(rows))
    print(f"\nchance: {PATCH**2 / SIZE**2:.1%}; target: at least 80% of test images")
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
