"""Per-image augmentation policies in a DataLoader: AugMix (paper 000's recipe), AutoAugment and
RandAugment (paper 003), each timm's, after random flip, crop and rotation.

These are per-image PIL ops, so unlike the batch-level tensor augmentation in
`edgecls.training.augment` they run item by item, optionally in worker processes.

timm draws from python `random` and `numpy.random`, torchvision from the global torch RNG. To make
a run repeatable every image is augmented under its own seed, drawn from the loader's generator
together with the shuffle order: the batches then depend only on that generator, not on the
number of workers or on which worker handled an image, and the caller's RNG states are untouched.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN
from timm.data.auto_augment import (
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
)
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode, v2

from edgecls.data.cache import note_read
from edgecls.data.sampling import WHOLE, Shard, epoch_order
from edgecls.data.splits import ImageSplit
from edgecls.registry import AUGMENT_POLICIES

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class PerImagePolicy:
    """An augmentation policy of timm's PIL ops, run item by item in a DataLoader: `make` turns
    timm's hparams into the transform."""

    make: Callable[[dict], Callable]


# timm's policy strings: AugMix of the paper (severity 3, width 3), AutoAugment's ImageNet policy
# as timm's `v0r` (`v0` with its posterize fixed: `v0` asks PIL for 0 bits in 2% of the images and
# raises), RandAugment at magnitude 9 with noise (timm's train.py default).
AUGMENT_POLICIES.register("augmix", "AugMix, severity 3, width 3 (paper 000), per image")(
    PerImagePolicy(lambda hparams: augment_and_mix_transform("augmix-m3-w3", hparams))
)
AUGMENT_POLICIES.register("autoaugment", "AutoAugment's ImageNet policy (paper 003), per image")(
    PerImagePolicy(lambda hparams: auto_augment_transform("v0r", hparams))
)
AUGMENT_POLICIES.register("randaugment", "RandAugment, magnitude 9 with noise, per image")(
    PerImagePolicy(lambda hparams: rand_augment_transform("rand-m9-mstd0.5", hparams))
)


def per_image_transform(
    input_size: int,
    grayscale: bool,
    hflip: bool = True,
    max_rotation: float = 10.0,
    policy: str = "augmix",
) -> Transform:
    """PIL image -> uint8 tensor (C, S, S): flip, padded random crop, rotation, then the timm
    `policy`.

    The policies' colour ops expect RGB, so grayscale images go through them as RGB and come
    back as one channel. The hparams are the ones timm's `create_transform` passes: translations
    scaled to the image size and the ImageNet mean as fill colour.
    """
    fill = tuple(min(255, round(255 * x)) for x in IMAGENET_DEFAULT_MEAN)
    hparams = {"translate_const": int(input_size * 0.45), "img_mean": fill, "translate_pct": 0.3}
    steps: list[Callable] = [v2.RGB()]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.RandomCrop(input_size, padding=input_size // 8, padding_mode="reflect"),
        v2.RandomRotation(max_rotation, interpolation=InterpolationMode.BILINEAR, fill=fill),
        AUGMENT_POLICIES[policy].make(hparams),
    ]
    if grayscale:
        steps.append(v2.Grayscale(num_output_channels=1))
    steps.append(v2.PILToTensor())
    return v2.Compose(steps)


class PerImageDataset(Dataset):
    """Wraps an ImageSplit: item i -> (augmented uint8 tensor, label)."""

    def __init__(
        self,
        split: ImageSplit,
        *,
        input_size: int,
        grayscale: bool,
        hflip: bool,
        policy: str = "augmix",
    ) -> None:
        self.split = split
        self.transform = per_image_transform(input_size, grayscale, hflip, policy=policy)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.split.images[i]
        note_read(pixels, self.split.images)
        image = v2.functional.to_pil_image(pixels)
        return self.transform(image), self.split.labels[i]


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch's CPU RNG for one image, then restore the caller's states."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # CPU only: the CUDA RNG is not ours to touch
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class _SeededItems(Dataset):
    """Item (i, seed) -> dataset[i] augmented under `seed`."""

    def __init__(self, dataset: PerImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        with _seeded_rngs(seed):
            return self.dataset[index]


class _SeededShuffle(Sampler[tuple[int, int]]):
    """A fresh shuffle per pass, each index paired with a per-image seed from `generator`."""

    def __init__(
        self,
        n: int,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
        batch_size: int | None = None,
        shard: Shard = WHOLE,
    ) -> None:
        self.n = n
        self.generator = generator
        self.weights = weights  # a class-balanced draw with replacement (balance=sampler)
        self.batch_size, self.shard = batch_size or n, shard  # this process's part of a batch

    def __len__(self) -> int:
        return sum(len(b) for b in self.shard.batches(torch.arange(self.n), self.batch_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n, self.generator, self.weights)
        seeds = torch.randint(2**32, (self.n,), generator=self.generator)
        positions = torch.cat(self.shard.batches(torch.arange(self.n), self.batch_size))
        return zip(order[positions].tolist(), seeds[positions].tolist(), strict=True)


def per_image_loader(
    split: ImageSplit,
    batch_size: int,
    generator: torch.Generator,
    *,
    input_size: int,
    grayscale: bool,
    hflip: bool,
    workers: int,
    policy: str = "augmix",
    weights: torch.Tensor | None = None,
    shard: Shard = WHOLE,
) -> DataLoader:
    """Shuffled `policy` batches (uint8 images (B, C, S, S), labels) depending only on `generator`.

    Like `edgecls.training.augment.index_batches`, the last short batch is dropped when there is
    more than one batch (batch norm needs > 1 sample), so a resumed run sees the same batches.
    """
    dataset = PerImageDataset(
        split, input_size=input_size, grayscale=grayscale, hflip=hflip, policy=policy
    )
    return DataLoader(
        _SeededItems(dataset),
        batch_size=batch_size,
        sampler=_SeededShuffle(len(split), generator, weights, batch_size, shard),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),  # for non-blocking copies to the GPU
        persistent_workers=False,
        generator=generator,  # the loader draws a worker base seed: not from the global RNG
    )
