"""Training objectives: cross-entropy / AM-Softmax for one model, and deep mutual learning, each
with optional label smoothing, on class indices or mixed (soft) targets; knowledge distillation
from a frozen teacher on top of either.

An objective maps the outputs of the trained models on a batch (and the batch itself, which a
teacher looks at) to one loss to minimise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from edgecls import runs
from edgecls.config import Config
from edgecls.errors import UserError
from edgecls.models import Classifier, model_from_checkpoint

Objective = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def margin_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, margin: float, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy with `margin` subtracted from the target logit: AM-Softmax when the logits
    are s * cos(theta) and margin = s * m; plain cross-entropy when margin is 0.

    `targets` are class indices or, for mixed batches, class probabilities (the margin is then
    subtracted in proportion); `smoothing` mixes them with the uniform distribution."""
    if margin:
        hot = targets if targets.is_floating_point() else F.one_hot(targets, logits.shape[1])
        logits = logits - margin * hot.to(logits.dtype)
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def kl_to(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """D_KL(p_target || p) with the target's distribution held fixed (detached)."""
    target = F.softmax(target_logits.detach().float(), dim=1)
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, reduction="batchmean")


def single_objective(model: Classifier, smoothing: float = 0.0) -> Objective:
    def objective(outputs: list[torch.Tensor], labels: torch.Tensor, images: torch.Tensor):
        return margin_cross_entropy(outputs[0], labels, model.margin, smoothing)

    return objective


def mutual_objective(fast: Classifier, slow: Classifier, smoothing: float = 0.0) -> Objective:
    """Paper 000, section 3.3: L_fast = CE(p1, y) + KL(p2 || p1) and
    L_slow = AMS(p2, y) + KL(p1 || p2), each partner detached; one backward of the sum gives
    each model exactly the gradient of its own loss."""

    def objective(outputs: list[torch.Tensor], labels: torch.Tensor, images: torch.Tensor):
        fast_logits, slow_logits = outputs
        fast_loss = margin_cross_entropy(fast_logits, labels, fast.margin, smoothing)
        fast_loss = fast_loss + kl_to(slow_logits, fast_logits)
        slow_loss = margin_cross_entropy(slow_logits, labels, slow.margin, smoothing)
        slow_loss = slow_loss + kl_to(fast_logits, slow_logits)
        return fast_loss + slow_loss

    return objective


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


def build_objective(
    config: Config, models: list[Classifier], teacher: torch.nn.Module | None = None
) -> Objective:
    """The loss the trained models minimise together, as the config asks for it."""
    if config.mutual:
        objective = mutual_objective(*models, smoothing=config.label_smoothing)
    else:
        objective = single_objective(models[0], config.label_smoothing)
    if teacher is None:
        return objective
    return distillation(objective, teacher, config.kd_temperature, config.kd_alpha)


def load_teacher(config: Config, classes: list[str], device: torch.device) -> Classifier | None:
    """The frozen teacher of `config.teacher` (a run folder or checkpoint), in eval mode; it is
    never optimised or checkpointed."""
    if config.teacher is None:
        return None
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
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.to(device).eval()
