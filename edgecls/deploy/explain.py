"""`edgecls explain`: saliency overlays for image files, from a checkpoint (Grad-CAM) or any
exported model (occlusion, run in its own runtime), with an index page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecls import runs
from edgecls.data import BadImageError, load_image, printable_path, to_pixels
from edgecls.deploy.predict import expand_inputs
from edgecls.deploy.runtime import Predictor, TorchPredictor, load_predictor
from edgecls.errors import UserError
from edgecls.evaluate.saliency import gradcam, occlusion, occlusion_window, target_layer
from edgecls.report.saliency import Overlay, overlay, write_explain_page

METHODS = ("auto", "gradcam", "occlusion")


@dataclass
class Explained:
    """What `explain_images` wrote: an overlay per readable image, the index page, the method."""

    overlays: list[Overlay]
    skipped: list[tuple[str, str]]  # (path, reason) of images that could not be read
    index: Path
    method: str


def check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an --out that would put files among the user's own: a folder
    holding files that an earlier `explain` did not write, or one inside an image folder given."""
    runs.check_folder_writable(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "explain.html").is_file():
        raise UserError(f"{out_dir} holds other files: name another --out")
    for item in inputs:
        if item.is_dir() and out_dir.resolve().is_relative_to(item.resolve()):
            raise UserError(f"--out {out_dir} is inside the image folder {item}: name another")


def _read(files: list[Path], grayscale: bool, size: int) -> tuple[list, list, list]:
    """The readable files, their uint8 pixels, and (path, reason) for the unreadable."""
    readable, pixels, skipped = [], [], []
    for path in files:
        try:
            pixels.append(to_pixels(load_image(path, grayscale), size))
            readable.append(path)
        except BadImageError as error:
            skipped.append((error.path, error.reason))
    return readable, pixels, skipped


def saliency_maps(
    predictor: Predictor, pixels: np.ndarray, targets: list[int], method: str
) -> tuple[np.ndarray, str]:
    """Maps for uint8 `pixels` (N, C, S, S) and a sentence naming the method. auto: Grad-CAM
    for a checkpoint, occlusion for an exported model, whose runtime gives no gradients."""
    if method == "auto":
        method = "gradcam" if isinstance(predictor, TorchPredictor) else "occlusion"
    if method == "gradcam":
        if not isinstance(predictor, TorchPredictor):
            raise UserError(
                f"Grad-CAM needs gradients, which {predictor.backend} does not give: explain the "
                "run folder or its .pt, or use --method occlusion (the default for exports)"
            )
        layer = target_layer(predictor.model, pixels.shape[-1], pixels.shape[1])
        floats = torch.from_numpy(pixels).float() / 255
        return gradcam(predictor.model, floats, targets, layer), layer.describe()
    window, stride = occlusion_window(pixels.shape[-1])
    floats = pixels.astype(np.float32) / 255
    maps = np.concatenate(
        [occlusion(predictor.run, floats[i : i + 1], [t]) for i, t in enumerate(targets)]
    )
    return maps, f"occlusion ({window} px squares, stride {stride}) in {predictor.backend}"


def _file_name(index: int, path: Path, label: str, probability: float) -> str:
    """000_<image>_pred-<label>_<percent>pct.png, with characters unsafe in file names replaced."""
    safe = re.compile(r"[^\w.-]+")
    stem, label = safe.sub("_", path.stem)[:60], safe.sub("_", label)[:40]
    return f"{index:03d}_{stem}_pred-{label}_{round(100 * probability)}pct.png"


def explain_images(
    model_path: Path, inputs: list[Path], out_dir: Path, method: str = "auto"
) -> Explained:
    """An overlay PNG per readable image in `out_dir` and explain.html listing them; the images
    themselves are only read."""
    from PIL import Image

    if method not in METHODS:
        raise UserError(f"unknown method '{method}': expected {', '.join(METHODS)}")
    files = expand_inputs(inputs)
    check_out_dir(out_dir, inputs)
    predictor = load_predictor(model_path)
    info = predictor.info
    readable, pixels, skipped = _read(files, info.grayscale, info.input_size)
    if not readable:
        path, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserError(f"none of the given images could be read: {path}: {reason}{more}")
    stack = np.stack(pixels)
    probabilities = predictor.predict_proba(stack)
    targets = probabilities.argmax(1).tolist()
    maps, described = saliency_maps(predictor, stack, targets, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays = []
    for index, (path, target) in enumerate(zip(readable, targets, strict=True)):
        label, probability = info.classes[target], float(probabilities[index, target])
        file = out_dir / _file_name(index, path, label, probability)
        Image.fromarray(overlay(stack[index], maps[index])).save(file)
        overlays.append(Overlay(printable_path(path), label, probability, file))
    return Explained(overlays, skipped, write_explain_page(overlays, described, out_dir), described)
