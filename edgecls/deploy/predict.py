"""`edgecls predict`: top-k labels for image files, preprocessed as the model was trained."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.data import IMAGE_EXTENSIONS, BadImageError, load_image, printable_path, to_pixels
from edgecls.deploy.runtime import load_predictor
from edgecls.errors import UserError
from edgecls.report.escape import csv_cell


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Image files given directly, plus every image found (recursively) under given folders."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(
                p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"no such file or folder: {item}")
    if not files:
        raise UserError("no images found in the given paths")
    return files


def top_labels(
    probabilities: np.ndarray, classes: list[str], k: int
) -> tuple[list[str], list[float]]:
    """The k most probable labels of one image, most probable first, with their probabilities."""
    best = np.argsort(-probabilities, kind="stable")[: min(k, len(classes))]
    return [classes[i] for i in best], probabilities[best].tolist()


def predict_images(
    model_path: Path, inputs: list[Path], top_k: int = 5
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predictions for every readable image, and (path, reason) for those that could not be read.

    Works on a checkpoint or run folder and on every exported model `load_predictor` reads.
    """
    predictor = load_predictor(model_path)
    info = predictor.info
    readable, tensors, skipped = [], [], []
    for path in expand_inputs(inputs):
        try:
            tensors.append(to_pixels(load_image(path, info.grayscale), info.input_size))
            readable.append(path)
        except BadImageError as error:
            skipped.append((error.path, error.reason))
    if not tensors:
        return [], skipped
    probabilities = predictor.predict_proba(np.stack(tensors))
    predictions = [
        Prediction(printable_path(path), *top_labels(row, info.classes, top_k))
        for path, row in zip(readable, probabilities, strict=True)
    ]
    return predictions, skipped


def write_predictions_csv(predictions: list[Prediction], path: Path) -> None:
    """One row per image; a label or path a spreadsheet would run as a formula is quoted."""
    k = max((len(p.labels) for p in predictions), default=0)
    header = ["path"] + [f"{name}{i}" for i in range(1, k + 1) for name in ("label", "prob")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for p in predictions:
            cells = [
                c
                for pair in zip(p.labels, p.probabilities, strict=True)
                for c in (csv_cell(pair[0]), f"{pair[1]:.6f}")
            ]
            writer.writerow([csv_cell(p.path), *cells])
