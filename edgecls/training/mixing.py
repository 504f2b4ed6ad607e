"""Batch transforms that mix pairs of images and their labels: mixup and CutMix (papers 002-004),
through timm's `Mixup`, and stitch-mixup (paper 002). A mixed batch has soft targets (class
probabilities), which every objective accepts; an unmixed one keeps its class indices.

Each transform is one registration in `BATCH_TRANSFORMS`: a class built from (config, number of
classes) with a `wanted(config)` test; the first registered one the config wants is used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup

from edgecls.config import Config
from edgecls.registry import BATCH_TRANSFORMS

BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def no_mixing(images: torch.Tensor, labels: torch.Tensor, epoch: int):
    return images, labels


@BATCH_TRANSFORMS.register("stitch", "stitch mixup (002): stitch_mixup=horizontal or vertical")
class StitchBatches:
    """Stitch-mixup (paper 002, section III.D): the first share lambda ~ Beta(alpha, alpha) of
    each image's width (`horizontal`) or height (`vertical`) joined to the rest of its partner,
    the image at the other end of the batch; the label is weighted by the area each one covers.
    Same epochs and share of batches as MixBatches (below); draws from numpy's global RNG."""

    @staticmethod
    def wanted(config: Config) -> bool:
        return config.stitch_mixup != "none"

    def __init__(self, config: Config, num_classes: int) -> None:
        self.axis = 3 if config.stitch_mixup == "horizontal" else 2
        self.alpha, self.prob, self.num_classes = config.stitch_alpha, config.mix_prob, num_classes
        self.first_epoch = config.mix_off_first
        self.end_epoch = config.max_epochs - config.mix_off_last

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        if not self.first_epoch <= epoch < self.end_epoch or np.random.rand() >= self.prob:
            return images, labels
        length = images.shape[self.axis]
        cut = int(round(np.random.beta(self.alpha, self.alpha) * length))
        partner = images.flip(0)
        stitched = torch.cat(
            [images.narrow(self.axis, 0, cut), partner.narrow(self.axis, cut, length - cut)],
            dim=self.axis,
        )
        share = cut / length
        hot = F.one_hot(labels, self.num_classes).float()
        return stitched, share * hot + (1 - share) * hot.flip(0)


@BATCH_TRANSFORMS.register("mixup_pairs", "mixup with a shuffled batch or the previous one (003)")
class MixupPairs:
    """Paper 003's two kinds of mixup (its Table 4): `shuffle` mixes a batch with a shuffled
    clone of itself (its type 2); `two_batches` mixes each batch with the one before it in the
    epoch, as the original mixup paper does (its type 1; the epoch's first batch pairs with a
    shuffled clone). lambda ~ Beta(alpha, alpha) per batch; draws from numpy's global RNG."""

    @staticmethod
    def wanted(config: Config) -> bool:
        return bool(config.mixup and not config.cutmix and config.mixup_mode != "flip")

    def __init__(self, config: Config, num_classes: int) -> None:
        self.alpha, self.two_batches = config.mixup, config.mixup_mode == "two_batches"
        self.prob, self.num_classes = config.mix_prob, num_classes
        self.first_epoch = config.mix_off_first
        self.end_epoch = config.max_epochs - config.mix_off_last
        self.previous: tuple[int, torch.Tensor, torch.Tensor] | None = None  # epoch, batch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        hot = F.one_hot(labels, self.num_classes).float()
        partner = self.previous if self.two_batches else None
        if self.two_batches:
            self.previous = (epoch, images, hot)
        if not self.first_epoch <= epoch < self.end_epoch or np.random.rand() >= self.prob:
            return images, labels
        if partner is None or partner[0] != epoch or partner[1].shape != images.shape:
            order = torch.from_numpy(np.random.permutation(len(labels)))
            partner = (epoch, images[order], hot[order])
        lam = float(np.random.beta(self.alpha, self.alpha))
        return lam * images + (1 - lam) * partner[1], lam * hot + (1 - lam) * partner[2]


@BATCH_TRANSFORMS.register("timm_mix", "timm's mixup and/or CutMix: mixup, cutmix (003, 004)")
class MixBatches:
    """Mixup and/or CutMix (one or the other per batch when both are on), on a share
    `mix_prob` of the batches, except in the first `mix_off_first` and last `mix_off_last`
    epochs. The mixing draws come from numpy's global RNG, which checkpoints save and restore."""

    @staticmethod
    def wanted(config: Config) -> bool:
        return bool(config.mixup or config.cutmix)

    def __init__(self, config: Config, num_classes: int) -> None:
        self.mix = Mixup(
            mixup_alpha=config.mixup,
            cutmix_alpha=config.cutmix,
            prob=config.mix_prob,
            switch_prob=0.5,
            mode="batch",
            label_smoothing=0.0,  # the objective smooths, mixed or not
            num_classes=num_classes,
        )
        self.first_epoch = config.mix_off_first
        self.end_epoch = config.max_epochs - config.mix_off_last

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int):
        if not self.first_epoch <= epoch < self.end_epoch or len(labels) % 2:
            return images, labels  # timm mixes a batch with its reverse: it needs pairs
        return self.mix(images, labels)


def create_batch_transform(config: Config, num_classes: int) -> BatchTransform:
    """The first registered transform that the config asks for (stitching wins over mixing);
    none: batches pass unchanged."""
    for entry in BATCH_TRANSFORMS.entries().values():
        if entry.value.wanted(config):
            return entry.value(config, num_classes)
    return no_mixing
