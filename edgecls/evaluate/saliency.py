"""Saliency maps: which pixels a classifier's prediction rests on.

Checkpoints get Grad-CAM (Selvaraju et al., 2017) through captum's `LayerGradCam`: the feature
map of one backbone stage, weighted by the gradient of the predicted class, summed over channels,
rectified and upsampled to the input. Exported models (ONNX, OpenVINO, ...) give no gradients, so
they get occlusion (Zeiler & Fergus, 2014) through captum's `Occlusion`, which only runs the model
forward: the runtime that will deploy the model is the one explained. Both are reused from
captum, not written here.

Every map is float32 (N, S, S) at the model's input size, scaled to [0, 1] per image (1 = the
pixels the prediction depends on most; all 0 when nothing raised the class score).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecls.console import console
from edgecls.data import ImageSplit, to_float
from edgecls.errors import UserError
from edgecls.models import one_view
from edgecls.report.saliency import plot_saliency

# Grad-CAM's layer: the deepest stage whose feature map is at least this wide. The last stage of
# an ImageNet model at 224 px is 7 x 7; at 32 px MobileNetV3's last stage is 1 x 1, a single cell
# that cannot point anywhere, so a shallower stage is taken there.
MIN_SIDE = 7
GRADCAM_BATCH = 32
OCCLUSION_BATCH = 64  # occluded copies per forward call


@dataclass(frozen=True)
class TargetLayer:
    """The feature map Grad-CAM weighs: a module of the backbone and its output's side."""

    name: str
    module: nn.Module
    side: int

    def describe(self) -> str:
        return f"Grad-CAM on {self.name} ({self.side} x {self.side})"


def target_layer(model: nn.Module, input_size: int, channels: int) -> TargetLayer:
    """The deepest stage (of the backbone's timm `feature_info`) whose output is a feature map at
    least MIN_SIDE pixels wide; where no stage is that wide, the widest, deepest one.

    The stages' outputs are measured with one forward pass on a blank image, so the rule holds
    for any input size. Raises UserError for a model without convolutional stages (a ViT)."""
    backbone = getattr(model, "backbone", model)
    stages = [info["module"] for info in getattr(backbone, "feature_info", None) or []]
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape)  # returning nothing keeps the output as it is

        return hook

    hooks = [backbone.get_submodule(name).register_forward_hook(record(name)) for name in stages]
    parameter = next(model.parameters())
    blank = torch.zeros(1, channels, input_size, input_size, device=parameter.device)
    try:
        with torch.inference_mode():
            model.eval()(blank)
    finally:
        for hook in hooks:
            hook.remove()
    maps = [(name, shapes[name][-1]) for name in stages if len(shapes.get(name, ())) == 4]
    if not maps:
        raise UserError(
            f"{type(backbone).__name__} has no convolutional stage for Grad-CAM: "
            "use --method occlusion"
        )
    wide_enough = min(MIN_SIDE, max(side for _, side in maps))
    name, side = [(name, side) for name, side in maps if side >= wide_enough][-1]
    return TargetLayer(name, backbone.get_submodule(name), side)


def _scaled(maps: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) attributions -> (N, S, S) in [0, 1]: negatives dropped, each by its maximum."""
    maps = maps.detach().float().clamp(min=0)[:, 0]
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps / peak).cpu().numpy().astype(np.float32)


def gradcam(
    model: nn.Module, pixels: torch.Tensor, targets: list[int], layer: TargetLayer
) -> np.ndarray:
    """Grad-CAM maps of `targets` (a class per image) for float `pixels` (N, C, S, S) in [0, 1]."""
    from captum.attr import LayerAttribution, LayerGradCam

    device = next(model.parameters()).device
    size = tuple(pixels.shape[-2:])
    explainer = LayerGradCam(model.eval(), layer.module)
    maps = []
    with torch.enable_grad(), one_view(model):
        for start in range(0, len(pixels), GRADCAM_BATCH):
            batch = pixels[start : start + GRADCAM_BATCH].to(device)
            cam = explainer.attribute(
                batch, target=targets[start : start + GRADCAM_BATCH], relu_attributions=True
            )
            maps.append(_scaled(LayerAttribution.interpolate(cam, size, "bilinear")))
    return np.concatenate(maps) if maps else np.zeros((0, *size), np.float32)


def occlusion_window(input_size: int) -> tuple[int, int]:
    """The occluding square's side and stride: an eighth of the image, half-overlapping, so an
    image costs about 225 forward passes at any input size."""
    window = max(2, round(input_size / 8))
    return window, max(1, window // 2)


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of every class, 1 - p summed from the other classes' probabilities.

    For softmax outputs this is the class's logit minus the log-sum-exp of the others', recovered
    from what an exported model returns. A calibrated model's top probability is often exactly
    1.0 in float32 long before its logits stop moving; occlusion would see no change in it, but
    the other classes' tiny probabilities still move."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-45, None)
    top = p.argmax(1)[:, None]
    is_top = np.arange(p.shape[1]) == top
    others = p.sum(1, keepdims=True) - p  # precise for every class but the top one
    others[is_top] = np.where(is_top, 0.0, p).sum(1)  # the top's: the small ones summed
    return np.log(p) - np.log(np.clip(others, 1e-45, None))


def occlusion(
    forward: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, targets: list[int]
) -> np.ndarray:
    """Occlusion maps of `targets` for float `pixels` (N, C, S, S) in [0, 1], from a function that
    returns class probabilities for such pixels (any runtime's). A square of the image's mean
    colour slides over it; a pixel's score is how much the target's log-odds drop when it is
    covered, averaged over the squares covering it."""
    from captum.attr import Occlusion

    def scores(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(log_odds(forward(batch.numpy())).astype(np.float32))

    inputs = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    channels, size = inputs.shape[1], inputs.shape[-1]
    window, stride = occlusion_window(size)
    attributions = Occlusion(scores).attribute(
        inputs,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        baselines=inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).contiguous(),
        target=targets,
        perturbations_per_eval=OCCLUSION_BATCH,
    )
    return _scaled(attributions.sum(dim=1, keepdim=True))


def peak_in_box(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The pointing game (Zhang et al., 2016): for each map, whether its maximum falls inside
    its box (left, top, right, bottom; right and bottom excluded)."""
    flat = maps.reshape(len(maps), -1).argmax(1)
    rows, columns = np.unravel_index(flat, maps.shape[1:])
    left, top, right, bottom = np.asarray(boxes).T
    return (columns >= left) & (columns < right) & (rows >= top) & (rows < bottom)


MISTAKES_EXPLAINED = 8
CLASSES_EXPLAINED = 16


def examples_to_explain(
    probabilities: torch.Tensor, labels: torch.Tensor
) -> tuple[list[int], list[int]]:
    """The most confident mistakes (up to MISTAKES_EXPLAINED), and for each of the first
    CLASSES_EXPLAINED classes its most confident correct image, as indices."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    mistakes = wrong[confidence[wrong].argsort(descending=True)][:MISTAKES_EXPLAINED].tolist()
    correct = []
    for label in range(min(probabilities.shape[1], CLASSES_EXPLAINED)):
        right = torch.nonzero((predicted == labels) & (labels == label)).flatten()
        if len(right):
            correct.append(int(right[confidence[right].argmax()]))
    return mistakes, correct


def explain_run(
    model: nn.Module,
    split: ImageSplit,
    probabilities: torch.Tensor,
    classes: list[str],
    run_dir: Path,
) -> dict[str, Any]:
    """Grad-CAM of a run's best model for report.html: its most confident mistakes on `split`
    (validation) and one correct image per class, drawn as saliency_mistakes.png and
    saliency_correct.png; returns what metrics.json records of them.

    When the maps cannot be computed (captum not installed, a backbone without convolutional
    stages, in-place operations captum's hooks refuse), the reason is printed and returned
    instead: the trained run and the rest of its report are not lost for an illustration."""
    started = time.perf_counter()
    mistakes, correct = examples_to_explain(probabilities, split.labels)
    chosen = mistakes + correct
    if not chosen:
        return {"skipped": "no validation images"}
    images = split.images[chosen]
    confidence, predicted = probabilities[chosen].max(dim=1)
    try:
        layer = target_layer(model, images.shape[-1], images.shape[1])
        maps = gradcam(model, to_float(images), predicted.tolist(), layer)
    except (ImportError, UserError, RuntimeError) as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        console.print(
            f"saliency maps skipped: {reason}", highlight=False, markup=False, soft_wrap=True
        )
        return {"skipped": reason}
    rows = [
        {
            "source": split.sources[i] if i < len(split.sources) else str(i),
            "true": classes[int(split.labels[i])],
            "predicted": classes[int(p)],
            "confidence": float(c),
        }
        for i, p, c in zip(chosen, predicted, confidence, strict=True)
    ]
    pixels, shown = images.numpy(), len(mistakes)
    for part, rows_shown, name in (
        (slice(0, shown), rows[:shown], "saliency_mistakes.png"),
        (slice(shown, None), rows[shown:], "saliency_correct.png"),
    ):
        if rows_shown:
            captions = [
                f"true {r['true']}\npred {r['predicted']} ({r['confidence']:.0%})"
                for r in rows_shown
            ]
            plot_saliency(pixels[part], maps[part], captions, run_dir / name)
    return {
        "split": "val",
        "method": layer.describe(),
        "mistakes": rows[:shown],
        "correct": rows[shown:],
        "seconds": round(time.perf_counter() - started, 2),
    }
