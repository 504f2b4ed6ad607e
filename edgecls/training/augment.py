"""Training batches with augmentation.

`basic`, `light`, `crop` and `none` work on whole batches of in-memory tensors: on a 2-core CPU a
per-image PIL pipeline in worker processes competes with the model for the same cores, while one
random affine `grid_sample` per batch costs a small fraction of a training step. `augmix` (the
paper's recipe), `autoaugment` and `randaugment` are per-image work by nature and go through
timm's policies in a DataLoader (`edgecls.data.per_image`). Each is one registration in
`AUGMENT_POLICIES`: a tensor policy is a function of (images, generator, config).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from timm.data.random_erasing import RandomErasing
from torchvision.transforms.v2 import functional as TF

from edgecls.config import Config
from edgecls.data import ImageSplit, to_float
from edgecls.data.cache import note_read
from edgecls.data.per_image import PerImagePolicy, per_image_loader
from edgecls.data.sampling import WHOLE, Shard, balanced_sample_weights, epoch_order
from edgecls.registry import AUGMENT_POLICIES


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


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    hflip: bool,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Paper 004's training crop on a batch: per image, a box of `scale` of the area with an
    aspect ratio in `ratio` (log-uniform), anywhere inside the image, resized back to the input
    size (one affine `grid_sample`), then a random flip."""
    n = images.shape[0]
    area = _uniform(n, *scale, generator)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # as shares of the side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.ones(n)
    if hflip:
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n)
    theta = torch.stack(
        [
            torch.stack([width * flip, zero, centre_x], dim=1),
            torch.stack([zero, height, centre_y], dim=1),
        ],
        dim=1,
    ).to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# A short run underfits under `basic`: the same warp without rotation or colour jitter.
LIGHT = {"max_rotation": 0.0, "scale": (0.95, 1.05), "max_shift": 0.08, "jitter": 0.0}


@AUGMENT_POLICIES.register("basic", "flip, crop, small rotation and jitter, on batches")
def _basic(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    return basic_augment(images, generator, hflip=config.hflip)


@AUGMENT_POLICIES.register("light", "flip and a small shift and scale, on batches")
def _light(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    return basic_augment(images, generator, hflip=config.hflip, **LIGHT)


@AUGMENT_POLICIES.register("crop", "random-resized crop of crop_scale and flip (004), on batches")
def _crop(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    scale = tuple(config.crop_scale)
    return random_resized_crop(images, generator, hflip=config.hflip, scale=scale)


@AUGMENT_POLICIES.register("none", "no augmentation")
def _none(images: torch.Tensor, generator: torch.Generator, config: Config) -> torch.Tensor:
    return images


def index_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
    shard: Shard = WHOLE,
) -> Iterator[torch.Tensor]:
    """Shuffled index batches (a balanced draw under `weights`), this process's `shard` of
    each; the last short batch is dropped (batch norm needs > 1 sample)."""
    yield from shard.batches(epoch_order(n, generator, weights), batch_size)


def num_batches(n: int, batch_size: int, shard: Shard = WHOLE) -> int:
    step = batch_size * shard.size
    return 1 if n <= step else n // step


# Principal components of ImageNet's RGB pixels (AlexNet's lighting noise, as paper 004 uses it).
LIGHTING_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
LIGHTING_EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


def hsb_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Paper 004: brightness and saturation scaled by factors from [1 - s, 1 + s] and the hue
    shifted by up to s / 4 of the colour circle, drawn per image (grey images: brightness only)."""
    n = images.shape[0]
    brightness = _uniform(n, 1 - strength, 1 + strength, generator).tolist()
    saturation = _uniform(n, 1 - strength, 1 + strength, generator).tolist()
    hue = _uniform(n, -strength / 4, strength / 4, generator).tolist()
    jittered = []
    for image, b, s, h in zip(images, brightness, saturation, hue, strict=True):
        image = TF.adjust_brightness(image, b)
        if image.shape[0] == 3:
            image = TF.adjust_hue(TF.adjust_saturation(image, s), h)
        jittered.append(image)
    return torch.stack(jittered).clamp_(0.0, 1.0)


def pca_lighting(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """AlexNet's lighting noise (paper 004, std 0.1): each colour image shifted along ImageNet's
    RGB principal components by N(0, std)-scaled eigenvalues. Grey images are left alone."""
    if images.shape[1] != 3:
        return images
    alpha = torch.randn(images.shape[0], 3, generator=generator) * std
    shift = (alpha * LIGHTING_EIGVAL) @ LIGHTING_EIGVEC.T  # (N, 3): eigvec @ (alpha * eigval)
    return (images + shift.to(images.device).view(-1, 3, 1, 1)).clamp_(0.0, 1.0)


# Progressive resizing reaches the full side at this share of the run and keeps it to the end,
# so the last epochs (and batch-norm statistics) see the size the model is evaluated at; FFCV's
# ResNet recipes end their ramp a few epochs before the end for the same reason.
FULL_SIDE_AT = 0.75


def progressive_side(full: int, start_share: float, progress: float) -> int:
    """The training side at `progress` (0 at the start, 1 at the end of the run): from
    `start_share` of `full` up to `full` at FULL_SIDE_AT, in steps of 4 pixels (at least 8)."""
    if not start_share:
        return full
    share = start_share + (1 - start_share) * min(1.0, progress / FULL_SIDE_AT)
    return min(full, max(8, round(full * share / 4) * 4))


def training_batches(
    split: ImageSplit,
    config: Config,
    generator: torch.Generator,
    device: torch.device,
    shard: Shard = WHOLE,
    side: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(augmented float images in [0, 1], labels) on `device`, this process's `shard` of each
    batch, in an order set by `generator`:
    the `augment` policy, then `hsb_jitter` and `pca_lighting`, then, with `random_erasing`,
    timm's RandomErasing (boxes of 2-25% of the image set to 0, as in paper 001; it draws from
    python's RNG, which checkpoints restore); last, shrunk to `side` pixels where that is
    smaller than the images (progressive resizing)."""
    erase = None
    if config.random_erasing:
        erase = RandomErasing(
            config.random_erasing, min_area=0.02, max_area=0.25, mode="const", device=device.type
        )
    for images, labels in _augmented_batches(split, config, generator, device, shard):
        if config.hsb_jitter:
            images = hsb_jitter(images, config.hsb_jitter, generator)
        if config.pca_lighting:
            images = pca_lighting(images, config.pca_lighting, generator)
        if erase is not None:
            images = erase(images)
        if side is not None and side < images.shape[-1]:
            images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True)
        yield images, labels


def _augmented_batches(
    split: ImageSplit,
    config: Config,
    generator: torch.Generator,
    device: torch.device,
    shard: Shard,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    weights = balanced_sample_weights(split.labels) if config.balance == "sampler" else None
    policy = AUGMENT_POLICIES[config.augment]
    if isinstance(policy, PerImagePolicy):
        loader = per_image_loader(
            split,
            config.batch_size,
            generator,
            input_size=config.input_size,
            grayscale=config.grayscale,
            hflip=config.hflip,
            workers=config.workers,
            policy=config.augment,
            weights=weights,
            shard=shard,
        )
        for images, labels in loader:
            yield to_float(images.to(device, non_blocking=True)), labels.to(device)
        return
    pinned = device.type == "cuda"  # copied to the GPU while the previous batch trains
    for index in index_batches(len(split), config.batch_size, generator, weights, shard):
        pixels = split.images[index]
        note_read(pixels, split.images)
        if pinned:
            pixels = pixels.pin_memory()
        images = policy(to_float(pixels.to(device, non_blocking=pinned)), generator, config)
        yield images, split.labels[index].to(device, non_blocking=pinned)
