"""Batch-level augmentation on in-memory tensors.

On a 2-core CPU a per-image PIL pipeline in worker processes competes with the model for the same
cores; random affine warps, flips and colour jitter applied to a whole batch with one
`grid_sample` cost a small fraction of a training step instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgecls.config import Config


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def basic_augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    hflip: bool,
    max_rotation: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 0.1,
    jitter: float = 0.2,
) -> torch.Tensor:
    """Random flip, rotation, scale, shift (one affine warp) and brightness/contrast jitter."""
    n = images.shape[0]
    angle = _uniform(n, -max_rotation, max_rotation, generator) * math.pi / 180
    zoom = _uniform(n, *scale, generator)
    flip = torch.ones(n)
    if hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = _uniform(2 * n, -max_shift, max_shift, generator).view(n, 2) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    brightness = _uniform(n, 1 - jitter, 1 + jitter, generator).view(n, 1, 1, 1).to(images.device)
    contrast = _uniform(n, 1 - jitter, 1 + jitter, generator).view(n, 1, 1, 1).to(images.device)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * contrast + mean * brightness).clamp_(0.0, 1.0)


def create_augmentation(config: Config):
    """The training-time transform of a float batch in [0, 1], as configured."""
    if config.augment == "none":
        return lambda images, generator: images
    return lambda images, generator: basic_augment(images, generator, hflip=config.hflip)
