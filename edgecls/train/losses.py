"""Training objectives: cross-entropy / AM-Softmax for one model, and deep mutual learning, each
with optional label smoothing, on class indices or mixed (soft) targets.

An objective maps the outputs of the trained models on a batch to one loss to minimise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgecls.config import Config
from edgecls.models import Classifier

Objective = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


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
    def objective(outputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(outputs[0], labels, model.margin, smoothing)

    return objective


def mutual_objective(fast: Classifier, slow: Classifier, smoothing: float = 0.0) -> Objective:
    """Paper 000, section 3.3: L_fast = CE(p1, y) + KL(p2 || p1) and
    L_slow = AMS(p2, y) + KL(p1 || p2), each partner detached; one backward of the sum gives
    each model exactly the gradient of its own loss."""

    def objective(outputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        fast_logits, slow_logits = outputs
        fast_loss = margin_cross_entropy(fast_logits, labels, fast.margin, smoothing)
        fast_loss = fast_loss + kl_to(slow_logits, fast_logits)
        slow_loss = margin_cross_entropy(slow_logits, labels, slow.margin, smoothing)
        slow_loss = slow_loss + kl_to(fast_logits, slow_logits)
        return fast_loss + slow_loss

    return objective


def build_objective(config: Config, models: list[Classifier]) -> Objective:
    """The loss the trained models minimise together, as the config asks for it."""
    if config.mutual:
        return mutual_objective(*models, smoothing=config.label_smoothing)
    return single_objective(models[0], config.label_smoothing)
