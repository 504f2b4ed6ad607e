"""Classification heads: the AM-Softmax cosine classifier (paper 000, after Wang et al.)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def am_softmax_scale(num_classes: int) -> float:
    """The paper's s = max(sqrt(2) * ln(C - 1), 3)."""
    return max(math.sqrt(2) * math.log(max(num_classes - 1, 1)), 3.0)


class CosineHead(nn.Module):
    """Logits s * cos(theta) between L2-normalized features and L2-normalized class weights.

    The margin is not applied here but by the loss (`margin_cross_entropy`), so that evaluation,
    prediction and export see plain scaled cosines.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return self.scale * cosine
