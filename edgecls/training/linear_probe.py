"""Linear probing before fine-tuning (LP-FT; Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution"): the classifier of a pretrained model
is first fitted by logistic regression on its frozen features, then the whole model fine-tunes
from there. From a random head the first updates rewrite the features to fit it, which on a few
hundred images costs more than the features gain."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgecls.errors import UserError
from edgecls.evaluate.inference import predict_logits
from edgecls.models import Classifier

PROBE_IMAGES = 5_000  # at most this many training images fit the probe: its cost stays small


def penultimate_features(
    model: Classifier, images: torch.Tensor, batch_size: int, device: torch.device
) -> torch.Tensor:
    """What the classifier layer sees for each image, in eval mode and without augmentation."""
    classifier = model.backbone.get_classifier()
    features: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _, inputs, __: features.append(inputs[0]))
    try:
        predict_logits(model, images, batch_size, device)
    finally:
        hook.remove()
    return torch.cat(features).float().cpu()


def fit_linear_head(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int,
    seed: int,
) -> float:
    """Set the model's linear classifier to the logistic regression of the labels on its
    penultimate features; returns the probe's training top-1."""
    classifier = model.backbone.get_classifier()
    if not isinstance(classifier, nn.Linear) or not isinstance(model.head, nn.Identity):
        raise UserError("linear_probe=true needs a linear classifier: use head=linear")
    rows = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    rows = rows[:PROBE_IMAGES].sort().values
    device = classifier.weight.device
    features = penultimate_features(model, images[rows], batch_size, device).numpy()
    targets = labels[rows].numpy()
    from sklearn.linear_model import LogisticRegression  # 1 s to import: only when used

    probe = LogisticRegression(C=1.0, max_iter=1000).fit(features, targets)
    weight = np.zeros((num_classes, features.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, -10.0, dtype=np.float32)  # a class the probe never saw
    if len(probe.classes_) == 2:  # one decision function: its two sides
        coef = np.concatenate([-probe.coef_, probe.coef_]) / 2
        intercept = np.concatenate([-probe.intercept_, probe.intercept_]) / 2
    else:
        coef, intercept = probe.coef_, probe.intercept_
    weight[probe.classes_], bias[probe.classes_] = coef, intercept
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(weight))
        classifier.bias.copy_(torch.from_numpy(bias))
    return float(probe.score(features, targets))
