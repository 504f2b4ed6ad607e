"""A whitened first layer (`whiten_stem`), after the CIFAR-10 speed runs (Page's ResNet, Keller
Jordan's airbench): the first convolution starts as the principal components of the training
images' patches, each divided by the square root of its variance and taken with both signs, so
from the first step its channels are decorrelated and of equal variance instead of random.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WHITENING_IMAGES = 512  # drawn from the training split before cutting them into patches
# Patches sampled for the covariance: enough for a stable estimate of a 147-dimensional one (a
# 7x7 colour stem), seconds at most on a CPU.
WHITENING_PATCHES = 50_000
# Added to every variance before dividing: keeps the near-constant directions of patch space (a
# flat background) from being amplified without bound (airbench's value, normalized pixels).
WHITENING_EPS = 5e-4


def first_convolution(model: nn.Module) -> nn.Conv2d | None:
    """The first ordinary convolution the input meets (timm builds the stem first)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module if module.groups == 1 else None
    return None


def patch_components(
    patches: torch.Tensor, eps: float = WHITENING_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(variances, components) of rows of `patches`, largest variance first."""
    variances, vectors = torch.linalg.eigh(torch.cov(patches.T.double()))
    return variances.flip(0).clamp_min(0) + eps, vectors.flip(1).T


@torch.no_grad()
def whiten_stem(model: nn.Module, images: torch.Tensor, seed: int = 0) -> int:
    """Set the first convolution's filters from `images` (uint8, N x C x H x W, as the model
    takes them before its normalization): the top out_channels // 2 components and their
    negatives; any channels beyond twice the patch dimension keep their random start. Returns the
    number of filters set (0: the model has no plain first convolution)."""
    conv = first_convolution(model)
    if conv is None:
        return 0
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(images), generator=generator)[:WHITENING_IMAGES]
    pixels = images[sample].float() / 255
    if hasattr(model, "mean"):  # edgecls's Classifier normalizes before its backbone
        pixels = (pixels - model.mean.cpu()) / model.std.cpu()
    patches = F.unfold(pixels, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    patches = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    chosen = torch.randperm(len(patches), generator=generator)[:WHITENING_PATCHES]
    variances, components = patch_components(patches[chosen])
    count = min(conv.out_channels // 2, len(variances))
    filters = components[:count] / variances[:count].sqrt().unsqueeze(1)
    filters = torch.cat([filters, -filters]).view(2 * count, *conv.weight.shape[1:])
    conv.weight[: 2 * count] = filters.to(conv.weight)
    if conv.bias is not None:
        conv.bias[: 2 * count] = 0
    return 2 * count
