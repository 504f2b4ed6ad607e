"""Batch transforms that mix pairs of images and their labels: mixup and CutMix (papers 002-004),
through timm's `Mixup`. A mixed batch has soft targets (class probabilities), which every
objective accepts; an unmixed one keeps its class indices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.data import Mixup

from edgecls.config import Config

BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def no_mixing(images: torch.Tensor, labels: torch.Tensor, epoch: int):
    return images, labels


class MixBatches:
    """Mixup and/or CutMix (one or the other per batch when both are on), on a share
    `mix_prob` of the batches, except in the first `mix_off_first` and last `mix_off_last`
    epochs. The mixing draws come from numpy's global RNG, which checkpoints save and restore."""

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
    if config.mixup or config.cutmix:
        return MixBatches(config, num_classes)
    return no_mixing
