"""Training objectives: cross-entropy / AM-Softmax for one model, and deep mutual learning, each
with optional label smoothing, on class indices or mixed (soft) targets; knowledge distillation
from a frozen teacher on top of either (its logits cached per image under `kd_cache`).

An objective maps the outputs of the trained models on a batch (and the batch itself, which a
teacher looks at) to one loss to minimise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from edgecls import runs
from edgecls.config import Config, build_config
from edgecls.errors import UserError
from edgecls.models import (
    Classifier,
    create_model,
    model_from_checkpoint,
    normalization,
    read_state_dict,
)
from edgecls.registry import OBJECTIVES

Objective = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def margin_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margin: float,
    smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy with `margin` subtracted from the target logit: AM-Softmax when the logits
    are s * cos(theta) and margin = s * m; plain cross-entropy when margin is 0.

    `targets` are class indices or, for mixed batches, class probabilities (the margin is then
    subtracted in proportion); `smoothing` mixes them with the uniform distribution; `weight`
    is a per-class weight (balance=weights)."""
    if margin:
        hot = targets if targets.is_floating_point() else F.one_hot(targets, logits.shape[1])
        logits = logits - margin * hot.to(logits.dtype)
    if weight is not None:
        weight = weight.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)


def kl_to(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """D_KL(p_target || p) with the target's distribution held fixed (detached)."""
    target = F.softmax(target_logits.detach().float(), dim=1)
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, reduction="batchmean")


@OBJECTIVES.register(
    "cross_entropy", "cross-entropy (with the head's margin and label_smoothing) of one model"
)
def single_objective(
    model: Classifier, smoothing: float = 0.0, weight: torch.Tensor | None = None
) -> Objective:
    def objective(outputs: list[torch.Tensor], labels: torch.Tensor, images: torch.Tensor):
        return margin_cross_entropy(outputs[0], labels, model.margin, smoothing, weight)

    return objective


@OBJECTIVES.register("mutual", "deep mutual learning of a CE and an AM-Softmax model (000)")
def mutual_objective(
    fast: Classifier,
    slow: Classifier,
    smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
) -> Objective:
    """Paper 000, section 3.3: L_fast = CE(p1, y) + KL(p2 || p1) and
    L_slow = AMS(p2, y) + KL(p1 || p2), each partner detached; one backward of the sum gives
    each model exactly the gradient of its own loss."""

    def objective(outputs: list[torch.Tensor], labels: torch.Tensor, images: torch.Tensor):
        fast_logits, slow_logits = outputs
        fast_loss = margin_cross_entropy(fast_logits, labels, fast.margin, smoothing, weight)
        fast_loss = fast_loss + kl_to(slow_logits, fast_logits)
        slow_loss = margin_cross_entropy(slow_logits, labels, slow.margin, smoothing, weight)
        slow_loss = slow_loss + kl_to(fast_logits, slow_logits)
        return fast_loss + slow_loss

    return objective


class CachedTeacher(torch.nn.Module):
    """A frozen teacher that runs once per distinct image: its logits are kept by the image's
    8-bit pixels, which is exact because training images are 8-bit and, without augmentation or
    mixing, reach the loss unchanged (a teacher gives equal images equal logits)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher
        self.logits: dict[bytes, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.detach() * 255).round().to(torch.uint8).flatten(1).cpu().numpy()
        keys = [row.tobytes() for row in pixels]
        if not all(key in self.logits for key in keys):
            logits = self.teacher(images).float()
            self.logits.update(zip(keys, logits.unbind(0), strict=True))
            return logits
        return torch.stack([self.logits[key] for key in keys])


def distillation(
    objective: Objective, teacher: torch.nn.Module, temperature: float, alpha: float
) -> Objective:
    """Hinton et al. (2015), as papers 002-004 use it: (1 - alpha) of the objective on the labels
    plus alpha T^2 times the cross-entropy of the kept model's softened prediction against the
    frozen teacher's, both at temperature T, on the same (augmented) batch."""

    def objective_with_teacher(outputs, labels, images):
        with torch.no_grad():
            soft = F.softmax(teacher(images).float() / temperature, dim=1)
        student = F.log_softmax(outputs[0].float() / temperature, dim=1)
        distilled = -(soft * student).sum(dim=1).mean() * temperature**2
        return (1 - alpha) * objective(outputs, labels, images) + alpha * distilled

    return objective_with_teacher


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (classes x count) per class: each class weighs as much in the loss (balance=weights)."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return len(labels) / (num_classes * counts)


def build_objective(
    config: Config,
    models: list[Classifier],
    teacher: torch.nn.Module | None = None,
    weight: torch.Tensor | None = None,
) -> Objective:
    """The loss the trained models minimise together, as the config asks for it; `weight` is
    the per-class weight of balance=weights."""
    make = OBJECTIVES["mutual" if config.mutual else "cross_entropy"]
    objective = make(*models, smoothing=config.label_smoothing, weight=weight)
    if teacher is None:
        return objective
    if config.kd_cache:
        check_kd_cache(config)
        teacher = CachedTeacher(teacher)
    return distillation(objective, teacher, config.kd_temperature, config.kd_alpha)


def check_kd_cache(config: Config) -> None:
    if config.teacher is None:
        raise UserError("kd_cache caches a teacher's logits: set teacher= as well")
    changed = changing_keys(config)
    if changed:
        raise UserError(
            "kd_cache keeps the teacher's logits per image, which needs training images that "
            f"do not change: set {' '.join(changed)}"
        )


def changing_keys(config: Config) -> list[str]:
    """The settings under which a training image differs from epoch to epoch, as `key=off`."""
    off = {
        "augment": "none",
        "hflip": False,
        "hsb_jitter": 0.0,
        "pca_lighting": 0.0,
        "random_erasing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "stitch_mixup": "none",
    }
    return [
        f"{key}={str(value).lower()}" for key, value in off.items() if getattr(config, key) != value
    ]


def load_teacher(config: Config, classes: list[str], device: torch.device) -> Classifier | None:
    """The frozen teacher of `config.teacher`, in eval mode; it is never optimised or
    checkpointed. A run folder or checkpoint of edgecls, or a timm model name with its weights:
    `teacher_weights=FILE` (a state dict for these classes), else timm's pretrained weights."""
    if config.kd_cache:
        check_kd_cache(config)
    if config.teacher is None:
        return None
    if Path(config.teacher).exists() or not _is_timm_name(config.teacher):
        if config.teacher_weights:
            raise UserError("teacher_weights is for a timm model name; a run has its own weights")
        teacher = _teacher_from_run(config, classes)
    else:
        teacher = _teacher_from_timm(config, len(classes))
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.to(device).eval()


def _is_timm_name(name: str) -> bool:
    return name.startswith("hf-hub:") or name in timm.list_models()


def _teacher_from_run(config: Config, classes: list[str]) -> Classifier:
    checkpoint = runs.load_checkpoint(Path(config.teacher))
    if list(checkpoint["classes"]) != list(classes):
        raise UserError(f"teacher {config.teacher} was trained on other classes than this data")
    teacher, teacher_config = model_from_checkpoint(checkpoint)
    if teacher_config.grayscale != config.grayscale:
        kinds = {True: "grey", False: "colour"}
        raise UserError(
            f"teacher {config.teacher} takes {kinds[teacher_config.grayscale]} images, this run "
            f"{kinds[config.grayscale]} ones"
        )
    return teacher


def _teacher_from_timm(config: Config, num_classes: int) -> Classifier:
    """timm's `config.teacher` with `teacher_weights` (every tensor, the classifier included) or
    its pretrained weights, which must then already have one output per class."""
    channels = 1 if config.grayscale else 3
    settings = {"model": config.teacher, "grayscale": config.grayscale, "head": "linear"}
    if config.teacher_weights:
        teacher = create_model(build_config({**settings, "pretrained": False}), num_classes)
        state = read_state_dict(Path(config.teacher_weights))
        try:
            teacher.backbone.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).splitlines()[-1].strip()
            raise UserError(
                f"teacher_weights {config.teacher_weights} do not fit {config.teacher} with "
                f"{num_classes} outputs and {channels} input channel(s): {first}"
            ) from None
        return teacher
    try:
        backbone = timm.create_model(config.teacher, pretrained=True, in_chans=channels)
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(
            f"could not fetch pretrained weights for teacher '{config.teacher}' "
            f"({type(error).__name__}); when offline pass teacher_weights=FILE"
        ) from None
    if backbone.num_classes != num_classes:
        raise UserError(
            f"teacher {config.teacher} has {backbone.num_classes} outputs, this data "
            f"{num_classes} classes: pass teacher_weights=FILE trained on these classes"
        )
    return Classifier(backbone, *normalization(backbone, channels))
